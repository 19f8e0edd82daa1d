// Package rollout plans how an app's instances move to a new version or a
// new count, as batches of steps that an executor runs later; it runs
// nothing itself.
package rollout
