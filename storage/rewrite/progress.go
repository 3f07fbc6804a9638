package rewrite

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
)

// NewBar is the progress of a run on a terminal: a bar with the count, the rate and the time
// left, redrawn in place on w.
func NewBar(w io.Writer) *Bar {
	b := progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("rewrite"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("obj"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionFullWidth(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
	return &Bar{bar: b}
}

// Bar is a Progress drawn as a terminal progress bar.
type Bar struct {
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	total int64
}

func (b *Bar) Expect(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += n
	b.bar.ChangeMax64(b.total)
}

func (b *Bar) Add(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.bar.Add64(n)
}

// Finish clears the bar.
func (b *Bar) Finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.bar.Finish()
}

// Lines is the progress of a run off a terminal: a line every interval with the count, the
// rate since the start and, once a total is known, the time left.
type Lines struct {
	w        io.Writer
	start    time.Time
	done     atomic.Int64
	total    atomic.Int64
	stop     chan struct{}
	finished sync.WaitGroup
}

// NewLines starts writing progress lines to w every interval, until Finish.
func NewLines(w io.Writer, interval time.Duration) *Lines {
	l := &Lines{w: w, start: time.Now(), stop: make(chan struct{})}
	l.finished.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
				fmt.Fprintln(l.w, l.line())
			}
		}
	})
	return l
}

func (l *Lines) Expect(n int64) { l.total.Add(n) }
func (l *Lines) Add(n int64)    { l.done.Add(n) }

// Finish stops the lines.
func (l *Lines) Finish() {
	close(l.stop)
	l.finished.Wait()
}

func (l *Lines) line() string {
	done, total := l.done.Load(), l.total.Load()
	elapsed := time.Since(l.start)
	rate := float64(done) / elapsed.Seconds()
	s := fmt.Sprintf("rewrite: %d", done)
	if total > 0 {
		s += fmt.Sprintf("/%d", total)
	}
	s += fmt.Sprintf(" objects, %.0f/s", rate)
	if total > done && rate > 0 {
		left := time.Duration(float64(total-done) / rate * float64(time.Second))
		s += ", about " + left.Round(time.Second).String() + " left"
	}
	return s
}
