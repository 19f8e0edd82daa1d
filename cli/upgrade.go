package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/handover"
	"github.com/sprout-paas/sprout/store"
)

type upgradeOptions struct {
	noWait  bool
	timeout time.Duration
}

func newAgentUpgradeCommand(c *cli) *cobra.Command {
	o := &upgradeOptions{}
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Restart the agent into the binary now at its path, without a gap in serving",
		Long: `Upgrade the running agent in place: it starts the sprout binary now at its path
(put the new version there first) and hands it every listening socket (the
apps' ports, the API socket, metrics, git) and its state. The new process
restores its state and takes over; the old one stops accepting, finishes the
requests in flight (at most deploy.drain_timeout) and exits. No connection is
refused or dropped, and the apps' containers keep running.

If the new binary fails to start or is not ready within --timeout, the old
agent keeps serving and the command says why. An upgrade asked for during a
deploy (or another operation) waits for it to finish; with --no-wait it is
refused instead. Operations queued behind the one in flight, and those asked
for during the hand-over (a few seconds), are refused; run them again.

'systemctl reload sprout-agent' (SIGHUP to the agent) does the same.`,
		Example: `  install -m 0755 sprout-new /usr/local/bin/sprout.new && mv /usr/local/bin/sprout.new /usr/local/bin/sprout
  sprout agent upgrade
  sprout --host ssh://deploy@web-1 agent upgrade --no-wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgentUpgrade(cmd, c, o) },
	}
	cmd.Flags().BoolVar(&o.noWait, "no-wait", false, "refuse instead of waiting when a deploy or another operation is in progress")
	cmd.Flags().DurationVar(&o.timeout, "timeout", api.DefaultUpgradeTimeout, "how long the new agent process may take to be ready")
	return cmd
}

func runAgentUpgrade(cmd *cobra.Command, c *cli, o *upgradeOptions) error {
	client, err := c.client(cmd)
	if err != nil {
		return err
	}
	before, err := client.Agent(cmd.Context())
	if err != nil {
		return err
	}
	p := newPrinter(c.out)
	last, err := client.Upgrade(cmd.Context(), o.noWait, o.timeout, p.on)
	var se *api.StatusError
	if errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusMethodNotAllowed) {
		return fmt.Errorf("agent upgrade: this agent (sprout %s, pid %d) cannot upgrade itself in place: restart it to run the new binary (systemctl restart sprout-agent)", before.Version, before.PID)
	}
	if err != nil {
		return fmt.Errorf("agent upgrade: %w", err)
	}
	after := last.Agent
	if after == nil {
		return errors.New("agent upgrade: the agent did not say which process serves now (see its log)")
	}
	fmt.Fprintf(c.out, "%s agent upgraded: sprout %s (pid %d) serves, was sprout %s (pid %d), which exits once its requests in flight are done\n",
		p.elapsed(), after.Version, after.PID, before.Version, before.PID)
	return nil
}

// upgrader hands this agent over to the binary now at its path: it
// quiesces the agent, stops its background loops and closes its state
// file, starts the new process with every listener, and, once that one
// serves, lets runAgent stop accepting and drain. When the new process
// fails, all of it is undone and this process keeps serving.
type upgrader struct {
	ag    *agent.Agent
	st    *store.Store
	hs    *handover.Set
	loops *background
	log   *slog.Logger

	mu         sync.Mutex // one upgrade at a time
	successor  atomic.Pointer[handover.Successor]
	handedOver chan struct{}
	// stopping is closed when the agent stops: a successor starting
	// then is killed, so that it does not outlive the service.
	stopping chan struct{}
}

var _ api.Upgrader = (*upgrader)(nil)

// Upgrade implements api.Upgrader.
func (u *upgrader) Upgrade(ctx context.Context, noWait bool, timeout time.Duration, p agent.Progress) (api.AgentInfo, error) {
	if !u.mu.TryLock() {
		return api.AgentInfo{}, fmt.Errorf("%w: another upgrade of this agent is under way", agent.ErrBusy)
	}
	defer u.mu.Unlock()
	if s := u.successor.Load(); s != nil {
		return api.AgentInfo{}, fmt.Errorf("%w: this agent already handed over to pid %d", agent.ErrConflict, s.PID)
	}
	exe, err := executable()
	if err != nil {
		return api.AgentInfo{}, err
	}
	p.Step("quiesce")
	resume, err := u.ag.Quiesce(ctx, !noWait, p)
	if err != nil {
		return api.AgentInfo{}, err
	}
	p.Line("no operation runs; until the hand-over is done, new ones are refused")
	u.loops.stop()
	if err := u.st.Suspend(); err != nil {
		u.loops.start()
		resume()
		return api.AgentInfo{}, fmt.Errorf("close the state file: %w", err)
	}
	p.Step("start")
	succ, err := u.hs.Start(handover.StartOptions{Path: exe, Args: os.Args[1:], Version: Version, Timeout: timeout, Progress: p.Line, Stop: u.stopping})
	if err != nil {
		return api.AgentInfo{}, u.undo(err, resume)
	}
	p.Step("hand over")
	p.Line(fmt.Sprintf("sprout %s (pid %d) serves; this agent (pid %d) stops accepting and finishes its requests in flight", succ.Version, succ.PID, os.Getpid()))
	u.log.Info("handed over to the new agent process", "pid", succ.PID, "version", succ.Version)
	u.hs.Release()
	u.successor.Store(succ)
	close(u.handedOver)
	info := api.AgentInfo{ID: u.ag.ID(), Version: succ.Version, DataDir: u.ag.Config().DataDir, PID: succ.PID}
	return info, nil
}

// undo makes this agent serve again as before after the new process
// failed to take over.
func (u *upgrader) undo(failed error, resume func()) error {
	if err := u.st.Resume(); err != nil {
		u.log.Error("the upgrade failed, and the state file cannot be opened again: restart the agent", "error", err, "upgrade_error", failed)
		return fmt.Errorf("%v; this agent keeps its ports but cannot open its state file again (%v): restart it (systemctl restart sprout-agent)", failed, err)
	}
	u.loops.start()
	resume()
	u.log.Warn("upgrade failed; this agent keeps serving", "error", failed)
	return fmt.Errorf("%w; this agent (sprout %s, pid %d) keeps serving", failed, Version, os.Getpid())
}

// executable is the binary at this process's path, which an upgrade
// starts: the file there now, whatever was there when this one started.
func executable() (string, error) {
	exe, err := os.Executable() // the path, without " (deleted)" once replaced
	if err != nil {
		return "", fmt.Errorf("cannot tell where this agent's binary is: %w", err)
	}
	st, err := os.Stat(exe)
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: no binary at %s (%v): put the new sprout there first", agent.ErrInvalid, exe, err)
	case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("%w: %s is not an executable file: install the new sprout there with mode 0755", agent.ErrInvalid, exe)
	}
	return exe, nil
}

// onSignals makes SIGHUP an upgrade (systemctl reload), logged; once this
// agent handed over, SIGHUP and SIGTERM go to the new process, which
// systemd may not know yet as the service's main process. sig is
// notifySignals' channel.
func (u *upgrader) onSignals(ctx context.Context, sig <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sig:
			if succ := u.successor.Load(); succ != nil {
				u.log.Info("passing the signal on to the new agent process", "signal", s.String(), "pid", succ.PID)
				syscall.Kill(succ.PID, s.(syscall.Signal))
				continue
			}
			if s != syscall.SIGHUP {
				continue // the agent stops (runAgent's context)
			}
			go func() {
				u.log.Info("SIGHUP: upgrading to the binary at this agent's path")
				if _, err := u.Upgrade(context.Background(), false, api.DefaultUpgradeTimeout, &logProgress{log: u.log}); err != nil {
					u.log.Error("upgrade failed", "error", err)
				}
			}()
		}
	}
}

// notifySignals catches SIGHUP and SIGTERM for onSignals from the
// agent's first moment: until a signal is caught, Go's default for SIGHUP
// is to exit, and a reload during start (or just as an upgrade hands over
// to this process, whose predecessor passes signals on) would kill the
// agent. Those that come before onSignals runs wait in the channel.
func notifySignals() (<-chan os.Signal, func()) {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM)
	return sig, func() { signal.Stop(sig) }
}

// logProgress reports an upgrade that nobody watches to the log.
type logProgress struct {
	log  *slog.Logger
	step string
}

func (l *logProgress) Step(name string) { l.step = name }
func (l *logProgress) Line(text string) { l.log.Info(text, "step", l.step) }

// background runs the agent's loops (watcher, monitor, manifest follower,
// environment), which an upgrade stops before it hands the state file
// over, and starts again when the new process did not take over.
type background struct {
	parent context.Context
	loops  []func(context.Context)

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (b *background) start() {
	ctx, cancel := context.WithCancel(b.parent)
	b.cancel = cancel
	for _, loop := range b.loops {
		b.wg.Go(func() { loop(ctx) })
	}
}

// stop stops the loops and waits until they have returned.
func (b *background) stop() {
	b.cancel()
	b.wg.Wait()
}

// writePIDFile writes this process's id to path (systemd's PIDFile=), at
// once: the old agent exits only after its successor wrote it.
func writePIDFile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("config pid_file: %w", err)
	}
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("config pid_file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("config pid_file: %w", err)
	}
	return nil
}

// removePIDFile removes path when it still names this process.
func removePIDFile(path string) {
	if path == "" {
		return
	}
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		os.Remove(path)
	}
}
