package cli

import "golang.org/x/sys/unix"

// umask sets the process umask and returns the previous one, so the socket
// is created owner-only with no window where others could connect.
func umask(mask int) int { return unix.Umask(mask) }
