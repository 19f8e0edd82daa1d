// Package fleet coordinates the hosts of an environment through S3 alone,
// as docs/fleet.md describes: the rollout document and the hosts' reports;
// Next, the pure function that decides a rollout's next state, and
// Desired, the pure function that says what one host does; and Store,
// which reads and writes those objects with S3's conditional writes, so
// that whoever loses a race learns it with a 412 and decides again.
//
// The package runs nothing on a host. The agent polls, calls these
// functions, and carries out the actions they return.
package fleet
