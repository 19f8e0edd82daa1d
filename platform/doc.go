// Package platform knows the Docker platform's rules, as Elastic Beanstalk
// defines them: what an application bundle contains (a Dockerfile or a
// Dockerrun.aws.json, and which container port it serves on) and what an
// environment property may be.
package platform
