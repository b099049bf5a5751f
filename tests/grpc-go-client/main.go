// grpc-go-client: a CRI client built on grpc-go as Debian packages it (1.33), dialling the
// socket the way crictl and critest up to 1.26 do (the socket's path as the target, a
// custom dialer), so that every request carries the path as its HTTP/2 :authority.
// It calls Version and ListContainers COUNT times each on one connection (grpc-go's
// HPACK encoder re-uses its dynamic table and Huffman-codes strings) and prints what
// the runtime said. Messages are written by hand: Version's request is field 1 ("v1").
//
// usage: grpc-go-client SOCKET COUNT
package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
)

// rawCodec sends and receives already-encoded protobuf bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: grpc-go-client SOCKET COUNT")
		os.Exit(2)
	}
	socket := os.Args[1]
	count, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad COUNT:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	conn, err := grpc.DialContext(ctx, socket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(dialer))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	fmt.Println("authority", conn.Target())
	for i := 0; i < count; i++ {
		request := []byte{0x0a, 0x02, 'v', '1'}
		var reply []byte
		if err := conn.Invoke(ctx, "/runtime.v1.RuntimeService/Version", &request, &reply,
			grpc.ForceCodec(rawCodec{})); err != nil {
			fmt.Fprintln(os.Stderr, "Version:", err)
			os.Exit(1)
		}
		if !bytes.Contains(reply, []byte("vpod")) {
			fmt.Fprintf(os.Stderr, "Version answered %q\n", reply)
			os.Exit(1)
		}
		empty := []byte{}
		if err := conn.Invoke(ctx, "/runtime.v1.RuntimeService/ListContainers", &empty, &reply,
			grpc.ForceCodec(rawCodec{})); err != nil {
			fmt.Fprintln(os.Stderr, "ListContainers:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("ok %d Version and %d ListContainers calls\n", count, count)
}
