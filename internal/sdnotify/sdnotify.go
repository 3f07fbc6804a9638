// Package sdnotify tells systemd about the plugin's state (sd_notify(3)): one datagram of
// "KEY=value" lines on the unix socket that $NOTIFY_SOCKET names, for units of Type=notify.
// The command layer reads $NOTIFY_SOCKET and passes it here; "" (not run by systemd) sends
// nothing.
package sdnotify

import (
	"fmt"
	"net"
	"strings"
)

// Ready, Stopping and Status are the states serve sends.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Status is a one-line status for `systemctl status`.
func Status(s string) string { return "STATUS=" + strings.ReplaceAll(s, "\n", " ") }

// Notify sends the states, one per line, in one datagram to socket: a path, or "@name" for an
// abstract socket. An empty socket sends nothing and is no error.
func Notify(socket string, states ...string) error {
	if socket == "" {
		return nil
	}
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		return fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or @abstract name", socket)
	}
	addr := &net.UnixAddr{Name: socket, Net: "unixgram"}
	if socket[0] == '@' {
		addr.Name = "\x00" + socket[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(states, "\n"))); err != nil {
		return fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	return nil
}
