// loadgen drives an HTTPS admission endpoint for the benchmarks in bench/run.py.
//
// Modes: "sat" (closed loop: -conns keep-alive connections, as fast as the server answers), "rate" (open loop at a
// fixed -rate; latency is measured from each request's scheduled start, so queueing is not hidden) and
// "handshake" (a new TLS connection per request). Prints one JSON object. Only used against 127.0.0.1.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
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
	flag.Parse()

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
	do := func() bool {
		resp, err := client.Post(*url, "application/json", bytes.NewReader(body))
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
				schedule <- next
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

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}
