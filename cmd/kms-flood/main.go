// Command flood is the hostile peer of docs/security.md's and docs/operations.md's
// measurements. It opens -conns connections with -streams streams each, whose Decrypt request
// never arrives (-body 0: headers only) or arrives -short bytes short of the -body bytes its
// message announces (-after-one: after one complete message); -silent connections that never speak; and -busy connections that send a
// tiny frame every -every, plus one new one every -every (the eviction flood). It holds
// everything for -hold and reports how many streams the plugin ended meanwhile. With
// -good-every, a well-behaved client sends one Decrypt every so often throughout, as
// kube-apiserver would, and reports its failures.
//
//	go run ./cmd/kms-flood -socket /var/run/kmsplugin/kms.sock -conns 4 -streams 10000 -silent 200
//	go run ./cmd/kms-flood -socket /var/run/kmsplugin/kms.sock -conns 128 -streams 32 -body 16380
//	go run ./cmd/kms-flood -socket /var/run/kmsplugin/kms.sock -conns 0 -busy 200 -good-every 2s
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"sync"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/internal/testing/hostile"
)

func main() {
	socket := flag.String("socket", "/var/run/kmsplugin/kms.sock", "plugin socket")
	conns := flag.Int("conns", 4, "connections that open streams whose request never completes")
	streams := flag.Int("streams", 10000, "such streams per connection")
	body := flag.Int("body", 0, "bytes each stream's message announces (0: headers only)")
	short := flag.Int("short", 3, "bytes of that message never sent")
	frame := flag.Int("frame", 0, "largest DATA frame the messages are sent in (0: 16 KiB)")
	afterOne := flag.Bool("after-one", false, "send one complete message of -body bytes before the unfinished one")
	silent := flag.Int("silent", 0, "connections that never send a byte")
	busy := flag.Int("busy", 0, "connections that send a tiny frame every -every, plus one new one every -every")
	every := flag.Duration("every", 100*time.Millisecond, "interval of the busy connections")
	goodEvery := flag.Duration("good-every", 0, "a well-behaved client's interval between Decrypts (0: no such client)")
	hold := flag.Duration("hold", 40*time.Second, "how long to hold everything open")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *hold)
	defer cancel()
	var wg sync.WaitGroup
	var b *hostile.Busy
	if *busy > 0 {
		b = hostile.StartBusy(ctx, *socket, *busy, *every)
	}
	if *goodEvery > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); goodClient(ctx, *socket, *goodEvery) }()
	}
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
		if err := p.OpenRequests(*streams, hostile.Request{Method: "/v2.KeyManagementService/Decrypt", Size: *body, Short: *short, Frame: *frame, AfterOne: *afterOne}); err != nil {
			log.Printf("opening streams: %v", err)
		}
		peers = append(peers, p)
	}
	deadline, _ := ctx.Deadline()
	for i, p := range peers {
		n, err := p.Ended(deadline)
		fmt.Printf("connection %d: %d of %d streams ended by the plugin (%v); it announced %d concurrent streams\n", i, n, *streams, err, p.MaxStreams)
	}
	<-ctx.Done()
	if b != nil {
		opened, closed := b.Wait()
		fmt.Printf("busy connections: %d opened, %d closed by the plugin\n", opened, closed)
	}
	wg.Wait()
	for _, c := range quiet {
		c.Close()
	}
}

// goodClient encrypts a seed, then decrypts it every interval with kube-apiserver's 3 s
// timeout until ctx ends, and reports how many Decrypts failed.
func goodClient(ctx context.Context, socket string, every time.Duration) {
	conn, err := kmsclient.Dial(socket)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := kmsapi.NewKeyManagementServiceClient(conn)
	call, done := context.WithTimeout(ctx, 3*time.Second)
	enc, err := client.Encrypt(call, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: "good"})
	done()
	if err != nil {
		log.Fatalf("good client: Encrypt: %v", err)
	}
	sent, failed := 0, 0
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Printf("good client: %d of %d Decrypts failed\n", failed, sent)
			return
		case <-tick.C:
		}
		call, done := context.WithTimeout(ctx, 3*time.Second)
		_, err := client.Decrypt(call, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "good"})
		done()
		if ctx.Err() != nil {
			continue // the hold ended during the call: not the plugin's failure
		}
		sent++
		if err != nil {
			failed++
			fmt.Printf("good client: Decrypt %d: %v\n", sent, err)
		}
	}
}
