package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
)

// printer shows a streamed operation as it happens: a header per step and
// its output lines indented, with the time since the command started. The
// upload's progress comes from the HTTP transport's goroutine, hence mu.
type printer struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func newPrinter(out io.Writer) *printer { return &printer{out: out, start: time.Now()} }

func (p *printer) elapsed() string {
	return fmt.Sprintf("[%5.1fs]", time.Since(p.start).Seconds())
}

func (p *printer) on(m api.Message) {
	if m.Operation != nil {
		return // what the agent accepted: see following
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if m.Line == "" {
		fmt.Fprintf(p.out, "%s ==> %s\n", p.elapsed(), m.Step)
		return
	}
	fmt.Fprintf(p.out, "%s     %s\n", p.elapsed(), m.Line)
}

// uploading shows a bundle's upload as the CLI sends it (size is -1 when
// unknown: a directory packed on the way): a line at most every second,
// and one when all is sent.
type uploading struct {
	r          io.Reader
	p          *printer
	size, sent int64
	start      time.Time
	shown      time.Time
}

func (p *printer) upload(r io.Reader, size int64) io.Reader {
	return &uploading{r: r, p: p, size: size}
}

func (u *uploading) Read(b []byte) (int, error) {
	if u.start.IsZero() {
		u.start, u.shown = time.Now(), time.Now()
		u.p.on(api.Message{Step: "upload"})
	}
	n, err := u.r.Read(b)
	u.sent += int64(n)
	switch {
	case err == io.EOF:
		u.p.on(api.Message{Step: "upload", Line: fmt.Sprintf("%s sent in %s", units.BytesSize(float64(u.sent)), time.Since(u.start).Round(time.Millisecond))})
	case time.Since(u.shown) >= time.Second:
		u.shown = time.Now()
		line := units.BytesSize(float64(u.sent)) + " sent"
		if u.size > 0 {
			line = fmt.Sprintf("%s of %s sent (%d%%)", units.BytesSize(float64(u.sent)), units.BytesSize(float64(u.size)), u.sent*100/u.size)
		}
		u.p.on(api.Message{Step: "upload", Line: line})
	}
	return n, err
}

// stepOrder is the order deploy steps are listed in a summary.
var stepOrder = []string{"listen", "unpack", "build", "start", "health", "swap", "drain", "retire", "record"}

// summary lists step timings like "build 1.2s, health 0.5s".
func summary(steps map[string]int64) string {
	var parts []string
	seen := map[string]bool{}
	for _, s := range stepOrder {
		if ms, ok := steps[s]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", s, fmtMillis(ms)))
			seen[s] = true
		}
	}
	for _, s := range slices.Sorted(maps.Keys(steps)) {
		if !seen[s] {
			parts = append(parts, fmt.Sprintf("%s %s", s, fmtMillis(steps[s])))
		}
	}
	return strings.Join(parts, ", ")
}

func fmtMillis(ms int64) string {
	if ms < 1000 {
		return fmt.Sprintf("%dms", ms)
	}
	return fmt.Sprintf("%.1fs", float64(ms)/1000)
}

// done says which version serves after a deploy or rollback.
func (p *printer) done(cmd *cobra.Command, client *api.Client, last *api.Message) error {
	v := last.Result
	if v == nil {
		return nil
	}
	st, err := client.Status(cmd.Context(), v.App)
	if err != nil {
		return err
	}
	took := time.Since(p.start).Round(100 * time.Millisecond)
	fmt.Fprintf(p.out, "%s %s %s is serving %s (%s", p.elapsed(), v.App, v.Label, servedAt(st), took)
	if len(v.Steps) > 0 {
		fmt.Fprintf(p.out, ": %s", summary(v.Steps))
	}
	fmt.Fprintln(p.out, ")")
	return nil
}

// stillServing says what keeps serving after a failed operation, for the
// end of its error message.
func stillServing(cmd *cobra.Command, client *api.Client, app string) string {
	st, err := client.Status(cmd.Context(), app)
	switch {
	case err != nil:
		return ""
	case st.Serving == "":
		return "\nnothing was serving before; nothing changed"
	}
	return fmt.Sprintf("\n%s keeps serving %s, untouched", st.Serving, servedAt(st))
}

// servedAt says where an app is served: its domains, or its port.
func servedAt(st api.AppStatus) string {
	if len(st.Domains) > 0 {
		return "at " + strings.Join(st.Domains, ", ")
	}
	return fmt.Sprintf("on port %d", st.Port)
}

// ago says how long ago t was, briefly.
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return t.Local().Format("2006-01-02 15:04")
}
