// Command flood is the hostile peer of docs/security.md's measurement: it opens -conns
// connections with -streams header-only streams each and -silent connections that never
// speak, holds them for -hold, and reports how many streams the plugin ended meanwhile.
//
//	go run ./internal/hostile/flood -socket /var/run/kmsplugin/kms.sock -conns 4 -streams 10000 -silent 200
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/hostile"
)

func main() {
	socket := flag.String("socket", "/var/run/kmsplugin/kms.sock", "plugin socket")
	conns := flag.Int("conns", 4, "connections that open header-only streams")
	streams := flag.Int("streams", 10000, "header-only streams per connection")
	silent := flag.Int("silent", 0, "connections that never send a byte")
	hold := flag.Duration("hold", 40*time.Second, "how long to hold everything open")
	flag.Parse()

	var quiet []net.Conn
	for range *silent {
		c, err := hostile.Silent(*socket)
		if err != nil {
			log.Fatal(err)
		}
		quiet = append(quiet, c)
	}
	var peers []*hostile.Peer
	for range *conns {
		p, err := hostile.Dial(*socket)
		if err != nil {
			log.Fatal(err)
		}
		if err := p.OpenStreams(*streams, "/v2.KeyManagementService/Decrypt"); err != nil {
			log.Printf("opening streams: %v", err)
		}
		peers = append(peers, p)
	}
	deadline := time.Now().Add(*hold)
	for i, p := range peers {
		n, err := p.Ended(deadline)
		fmt.Printf("connection %d: %d of %d streams ended by the plugin (%v); it announced %d concurrent streams\n", i, n, *streams, err, p.MaxStreams)
	}
	for _, c := range quiet {
		c.Close()
	}
}
