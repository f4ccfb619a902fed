// loadgen drives an HTTPS admission endpoint for the benchmarks in bench/run.py.
//
// Modes: "sat" (closed loop: -conns keep-alive connections, as fast as the server answers), "rate" (open loop at a
// fixed -rate; latency is measured from each request's dispatch, before it waits for a free connection, so
// queueing is not hidden) and
// "handshake" (a new TLS connection per request). The body may contain {{uid}}, {{seq}} and {{rand5}}, filled per
// request (see split). Prints one JSON object. Only used against 127.0.0.1.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Mode       string  `json:"mode"`
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"per_second"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	P999Ms     float64 `json:"p999_ms"`
	TargetRate int     `json:"target_rate,omitempty"`
}

func main() {
	url := flag.String("url", "", "https URL")
	bodyFile := flag.String("body", "", "request body file")
	caFile := flag.String("ca", "", "CA bundle")
	mode := flag.String("mode", "sat", "sat|rate|handshake")
	conns := flag.Int("conns", 16, "concurrent connections")
	rate := flag.Int("rate", 1000, "requests per second (rate mode)")
	duration := flag.Duration("duration", 10*time.Second, "how long to run")
	warmup := flag.Duration("warmup", 2*time.Second, "warm-up, not measured")
	serve := flag.String("serve", "", "instead: serve a fixed allow answer on this address (the harness floor)")
	certDir := flag.String("cert-dir", "", "with -serve: directory with tls.crt and tls.key")
	flag.Parse()
	if *serve != "" {
		floor(*serve, *certDir)
		return
	}

	body, err := os.ReadFile(*bodyFile)
	check(err)
	pem, err := os.ReadFile(*caFile)
	check(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		check(fmt.Errorf("no certificates in %s", *caFile))
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns, DisableKeepAlives: *mode == "handshake",
		ForceAttemptHTTP2: false,
	}
	client := &http.Client{Transport: transport, Timeout: 15 * time.Second}
	parts := split(body)
	var seq int64
	buffers := sync.Pool{New: func() any { return make([]byte, 0, len(body)+64) }}
	do := func() bool {
		buf := buffers.Get().([]byte)
		payload := fill(parts, atomic.AddInt64(&seq, 1), buf)
		defer buffers.Put(payload) //nolint:staticcheck // a slice header; reused after the request completes
		resp, err := client.Post(*url, "application/json", bytes.NewReader(payload))
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200
	}

	run := func(d time.Duration, record bool) result {
		var mu sync.Mutex
		latencies := make([]time.Duration, 0, 1<<16)
		var requests, errors int64
		deadline := time.Now().Add(d)
		var wg sync.WaitGroup
		start := time.Now()
		observe := func(started time.Time, ok bool) {
			lat := time.Since(started)
			atomic.AddInt64(&requests, 1)
			if !ok {
				atomic.AddInt64(&errors, 1)
			}
			if record {
				mu.Lock()
				latencies = append(latencies, lat)
				mu.Unlock()
			}
		}
		if *mode == "rate" {
			interval := time.Second / time.Duration(*rate)
			schedule := make(chan time.Time, *rate)
			for i := 0; i < *conns; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for at := range schedule {
						observe(at, do())
					}
				}()
			}
			next := time.Now()
			for next.Before(deadline) {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				// Stamp the actual dispatch time, not `next`: Go's poller wakes sub-millisecond sleeps up to 1 ms
				// late, which is the generator's lateness, not the server's. Waiting for a free connection (the
				// server falling behind) still counts, since the stamp is taken before the queue.
				schedule <- time.Now()
				next = next.Add(interval)
			}
			close(schedule)
		} else {
			for i := 0; i < *conns; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(deadline) {
						t := time.Now()
						observe(t, do())
					}
				}()
			}
		}
		wg.Wait()
		elapsed := time.Since(start).Seconds()
		sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
		pct := func(p float64) float64 {
			if len(latencies) == 0 {
				return 0
			}
			idx := int(p * float64(len(latencies)-1))
			return float64(latencies[idx].Microseconds()) / 1000
		}
		r := result{Mode: *mode, Requests: requests, Errors: errors, Seconds: elapsed,
			PerSecond: float64(requests) / elapsed, P50Ms: pct(0.50), P99Ms: pct(0.99), P999Ms: pct(0.999)}
		if *mode == "rate" {
			r.TargetRate = *rate
		}
		return r
	}
	if *warmup > 0 {
		run(*warmup, false)
	}
	out, _ := json.Marshal(run(*duration, true))
	fmt.Println(string(out))
}

// The body may hold placeholders, filled per request as the API server would: {{uid}} (the request uid), {{seq}}
// (a counter, e.g. for distinct pod names) and {{rand5}} (the 5 random characters of a generated
// kube-api-access-xxxxx volume). The body is split once; each request assembles its copy in a pooled buffer and
// sends it in one piece, as the API server's client does.
var placeholders = [][]byte{[]byte("{{uid}}"), []byte("{{seq}}"), []byte("{{rand5}}")}

type part struct {
	literal     []byte
	placeholder int // -1 for a literal
}

func split(body []byte) []part {
	var parts []part
	for len(body) > 0 {
		at, which := len(body), -1
		for i, p := range placeholders {
			if j := bytes.Index(body, p); j >= 0 && j < at {
				at, which = j, i
			}
		}
		if at > 0 {
			parts = append(parts, part{literal: body[:at], placeholder: -1})
		}
		if which < 0 {
			break
		}
		parts = append(parts, part{placeholder: which})
		body = body[at+len(placeholders[which]):]
	}
	return parts
}

func fill(parts []part, n int64, buf []byte) []byte {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	rand5 := make([]byte, 5)
	for i := range rand5 {
		rand5[i] = alphabet[rand.Intn(len(alphabet))]
	}
	values := [][]byte{[]byte(fmt.Sprintf("00000000-0000-4000-8000-%012d", n)), []byte(strconv.FormatInt(n, 10)),
		rand5}
	buf = buf[:0]
	for _, p := range parts {
		if p.placeholder >= 0 {
			buf = append(buf, values[p.placeholder]...)
		} else {
			buf = append(buf, p.literal...)
		}
	}
	return buf
}

// floor is a Go net/http server answering every review with a fixed allow: what this machine and harness can do
// at best, so the latency figures of the Python servers can be read against it.
func floor(addr, certDir string) {
	answer := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}`)
	http.HandleFunc("/mutate-v1-pod", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(answer)
	})
	server := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13}}
	check(server.ListenAndServeTLS(certDir+"/tls.crt", certDir+"/tls.key"))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}
