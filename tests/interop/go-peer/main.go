// Command go-peer is a golang/groupcache replica used as a test oracle by the
// interoperability tests of groupcache for Rust.
//
// It runs one groupcache.HTTPPool and one Group (-group NAME), or several
// (-groups A,B,...), on its own ServeMux, and adds a few JSON control endpoints
// so a test harness can wire up a ring, drive gets and read counters:
//
//	POST /peers         JSON array of peer URLs -> pool.Set(urls...) (order kept)
//	GET  /peers         the peer list last set, as a JSON array
//	GET  /get?key=K     group.Get(K): 200 with the value bytes, or 500 with the error text
//	GET  /get/K         the same, with the key in the path (the benchmarks' user-facing route)
//	POST /many          JSON array of keys -> one group.Get per key, all at once (the
//	                    benchmarks' many-keys read; golang/groupcache has no batch):
//	                    {"ok": n, "errors": n, "bytes": n, "micros": n, "first_error": "..."}
//	GET  /static        a fixed 1 KiB body: a bare net/http server, for the benchmarks
//	GET  /loads         {"total": n, "per_key": {"k": n, ...}} (getter invocations on this replica)
//	GET  /stats         the group's Stats counters and the main/hot CacheStats
//	GET  /owner?key=K   the peer the ring picks for K (see handleOwner)
//	GET  /healthz       200 "ok"
//
// /get, /get/K, /many, /loads and /stats act on the group named by the query
// parameter group=NAME, by default the first of -groups (or the -group); an
// unknown name is a 404. /owner needs none: the ring is the pool's, shared by
// every group.
//
// The groupcache protocol itself is served under -base-path (default
// "/_groupcache/"), exactly as golang/groupcache's HTTPPool serves it.
//
// The getter returns "go:"+key, except for keys starting with "error:", for
// which it fails with the error "getter failed for <key>". With -groups, each
// group's getter returns "go:"+group+":"+key instead, so the groups' values
// differ for the same key. With -value-bytes N the value is padded with '.'
// (or cut) to exactly N bytes.
//
// With -source URL the getter reads the key's version from a source of truth
// that changes (GET URL/KEY -> the version as decimal text, the history
// checker's source in tests/src/history/source.rs) and returns KEY#VERSION, as
// the Rust replica binary does with --source. It reads the source before its
// -load-delay, so a slow load carries the version it started with.
//
// By default peers are asked through Go's http.DefaultTransport, which keeps
// only 2 idle connections per peer. -max-idle-conns-per-host N gives the pool
// a transport of its own that keeps N, golang/groupcache's best setting under
// concurrent load (the benchmarks compare against both). With
// -exit-on-stdin-eof the peer shuts down when its stdin closes, so it cannot
// outlive a parent that was killed.
//
// The first line written to stdout is "listening http://HOST:PORT"; os.Stdout
// is unbuffered in Go, so it is visible to the parent as soon as it is printed.
//
// Build (GOPATH mode, Debian packages golang-go and
// golang-github-golang-groupcache-dev), from the repository root:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o target/interop/go-peer ./tests/interop/go-peer
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/golang/groupcache"
	"github.com/golang/groupcache/consistenthash"
)

// replicas is the number of ring points per peer; it is HTTPPool's default,
// and /owner must use the same value to agree with the pool.
const replicas = 50

// loadCounter counts getter invocations per key and in total.
type loadCounter struct {
	mu     sync.Mutex
	total  int64
	perKey map[string]int64
}

func (c *loadCounter) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total++
	c.perKey[key]++
}

// snapshot returns a JSON-ready copy of the counters.
func (c *loadCounter) snapshot() map[string]interface{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	perKey := make(map[string]int64, len(c.perKey))
	for k, n := range c.perKey {
		perKey[k] = n
	}
	return map[string]interface{}{"total": c.total, "per_key": perKey}
}

// served is one group of the pool and its getter's counters.
type served struct {
	group *groupcache.Group
	loads *loadCounter
}

// peer holds the state shared by the control handlers.
type peer struct {
	self   string
	pool   *groupcache.HTTPPool
	groups map[string]*served
	first  string // the group a control request without ?group= acts on

	mu    sync.Mutex
	peers []string // the list last passed to pool.Set, in order
}

// getterOptions configure every group's getter.
type getterOptions struct {
	source     string
	loadDelay  time.Duration
	valueBytes int
}

// newGetter returns the getter of a group: it counts each invocation in loads
// and returns "go:"+label (padded or cut per -value-bytes), where label is the
// key, prefixed with the group's name and ":" when the peer serves several.
func newGetter(prefix string, loads *loadCounter, opts getterOptions) groupcache.Getter {
	return groupcache.GetterFunc(func(ctx context.Context, key string, dest groupcache.Sink) error {
		loads.add(key)
		label := prefix + key
		var value []byte
		if opts.source != "" {
			version, err := readSource(ctx, strings.TrimSuffix(opts.source, "/"), key)
			if err != nil {
				return err
			}
			value = []byte(label + "#" + version)
		}
		if opts.loadDelay > 0 {
			select {
			case <-time.After(opts.loadDelay):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if value != nil {
			return dest.SetBytes(value)
		}
		if strings.HasPrefix(key, "error:") {
			return fmt.Errorf("getter failed for %s", key)
		}
		return dest.SetBytes(valueFor(label, opts.valueBytes))
	})
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	self := flag.String("self", "", "this replica's URL in the peer list (default: http://<bound address>)")
	groupName := flag.String("group", "interop", "group name")
	groupNames := flag.String("groups", "", "comma-separated names of several groups served on the one pool, each getter returning \"go:\"+GROUP+\":\"+KEY (overrides -group)")
	cacheBytes := flag.Int64("cache-bytes", 64<<20, "group cache size in bytes")
	loadDelay := flag.Duration("load-delay", 0, "how long the getter sleeps before returning")
	basePath := flag.String("base-path", "/_groupcache/", "HTTP path prefix of the groupcache protocol (must end in /)")
	logRequests := flag.Bool("log-requests", false, "log every HTTP request (method, raw URI, decoded path) to stderr")
	valueBytes := flag.Int("value-bytes", 0, "pad (or cut) every value to exactly this many bytes (0: \"go:\"+key as it is)")
	maxIdlePerHost := flag.Int("max-idle-conns-per-host", 0, "give the pool its own transport keeping this many idle connections per peer (0: http.DefaultTransport)")
	exitOnEOF := flag.Bool("exit-on-stdin-eof", false, "shut down when stdin reaches end of file (the parent exited)")
	source := flag.String("source", "", "read each key's version from this source of truth (GET URL/KEY) and return KEY#VERSION")
	flag.Parse()

	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("go-peer: ")
	if !strings.HasPrefix(*basePath, "/") || !strings.HasSuffix(*basePath, "/") {
		log.Fatalf("-base-path must start and end with /: %q", *basePath)
	}
	if *valueBytes < 0 || *maxIdlePerHost < 0 {
		log.Fatalf("-value-bytes and -max-idle-conns-per-host must not be negative")
	}
	// The groups, and the prefix of their values: none for the single -group.
	names, prefixed := []string{*groupName}, false
	if *groupNames != "" {
		names, prefixed = strings.Split(*groupNames, ","), true
		seen := make(map[string]bool, len(names))
		for _, name := range names {
			if name == "" || seen[name] {
				log.Fatalf("-groups: empty or repeated group name in %q", *groupNames)
			}
			seen[name] = true
		}
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	listenURL := "http://" + ln.Addr().String()
	fmt.Printf("listening %s\n", listenURL)
	if *self == "" {
		*self = listenURL
	}

	p := &peer{
		self:   *self,
		groups: make(map[string]*served, len(names)),
		first:  names[0],
	}
	// NewHTTPPoolOpts registers the pool as the PeerPicker but, unlike
	// NewHTTPPool, does not register an HTTP handler: we mount it below.
	p.pool = groupcache.NewHTTPPoolOpts(*self, &groupcache.HTTPPoolOptions{
		BasePath: *basePath,
		Replicas: replicas,
	})
	if *maxIdlePerHost > 0 {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.MaxIdleConns = 0 // no limit across peers
		transport.MaxIdleConnsPerHost = *maxIdlePerHost
		p.pool.Transport = func(context.Context) http.RoundTripper { return transport }
	}
	opts := getterOptions{source: *source, loadDelay: *loadDelay, valueBytes: *valueBytes}
	for _, name := range names {
		prefix := ""
		if prefixed {
			prefix = name + ":"
		}
		loads := &loadCounter{perKey: make(map[string]int64)}
		p.groups[name] = &served{
			group: groupcache.NewGroup(name, *cacheBytes, newGetter(prefix, loads, opts)),
			loads: loads,
		}
	}

	mux := http.NewServeMux()
	mux.Handle(*basePath, p.pool)
	mux.HandleFunc("/peers", p.handlePeers)
	mux.HandleFunc("/get", p.handleGet)
	mux.HandleFunc("/get/", p.handleGetPath)
	mux.HandleFunc("/many", p.handleMany)
	mux.HandleFunc("/static", handleStatic)
	mux.HandleFunc("/loads", p.handleLoads)
	mux.HandleFunc("/stats", p.handleStats)
	mux.HandleFunc("/owner", p.handleOwner)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "ok")
	})

	var handler http.Handler = mux
	if *logRequests {
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log.Printf("%s %s (path %q)", r.Method, r.RequestURI, r.URL.Path)
			mux.ServeHTTP(w, r)
		})
	}
	srv := &http.Server{Handler: handler}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *exitOnEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		log.Fatalf("serve: %v", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Printf("shutdown: %v", err)
	}
}

// readSource returns the version the source of truth holds for key now, as
// decimal text.
func readSource(ctx context.Context, source, key string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, source+"/"+key, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("reading the source: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading the source: %v", err)
	}
	version := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("reading the source: %s: %s", resp.Status, version)
	}
	if _, err := strconv.ParseUint(version, 10, 64); err != nil {
		return "", fmt.Errorf("reading the source: %q: %v", version, err)
	}
	return version, nil
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Printf("writing response: %v", err)
	}
}

// handlePeers sets (POST) or reports (GET) the pool's peer list.
func (p *peer) handlePeers(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		p.mu.Lock()
		peers := append([]string{}, p.peers...)
		p.mu.Unlock()
		writeJSON(w, http.StatusOK, peers)
	case http.MethodPost:
		var peers []string
		if err := json.NewDecoder(r.Body).Decode(&peers); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want a JSON array of URLs: " + err.Error()})
			return
		}
		p.mu.Lock()
		p.peers = peers
		p.pool.Set(peers...)
		p.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]interface{}{"peers": peers})
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// handleGet performs a user-facing group.Get. The key is taken from the query
// string (?key=...); the raw value bytes are the body.
func (p *peer) handleGet(w http.ResponseWriter, r *http.Request) {
	g := p.groupOf(w, r)
	if g == nil {
		return
	}
	q := r.URL.Query()
	if _, ok := q["key"]; !ok {
		http.Error(w, "missing key parameter", http.StatusBadRequest)
		return
	}
	var value []byte
	if err := g.group.Get(r.Context(), q.Get("key"), groupcache.AllocatingByteSliceSink(&value)); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if _, err := w.Write(value); err != nil {
		log.Printf("writing value: %v", err)
	}
}

// handleGetPath performs a user-facing group.Get of the key after "/get/" in
// the (decoded) path, answering with the value bytes and their length.
func (p *peer) handleGetPath(w http.ResponseWriter, r *http.Request) {
	g := p.groupOf(w, r)
	if g == nil {
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/get/")
	var value []byte
	if err := g.group.Get(r.Context(), key, groupcache.AllocatingByteSliceSink(&value)); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(value)))
	if _, err := w.Write(value); err != nil {
		log.Printf("writing value: %v", err)
	}
}

// handleMany gets every key of a JSON array at once, one goroutine per key
// (what a Go application does for many keys), and reports how many succeeded,
// their value bytes and the wall time in microseconds.
func (p *peer) handleMany(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	g := p.groupOf(w, r)
	if g == nil {
		return
	}
	var keys []string
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&keys); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want a JSON array of keys: " + err.Error()})
		return
	}
	start := time.Now()
	sizes := make([]int, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, key := range keys {
		wg.Add(1)
		go func(i int, key string) {
			defer wg.Done()
			var value []byte
			errs[i] = g.group.Get(r.Context(), key, groupcache.AllocatingByteSliceSink(&value))
			sizes[i] = len(value)
		}(i, key)
	}
	wg.Wait()
	micros := time.Since(start).Microseconds()
	ok, failed, total, first := 0, 0, 0, ""
	for i := range keys {
		if errs[i] != nil {
			failed++
			if first == "" {
				first = errs[i].Error()
			}
			continue
		}
		ok++
		total += sizes[i]
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"ok": ok, "errors": failed, "bytes": total, "micros": micros, "first_error": first,
	})
}

// staticBody is what /static serves.
var staticBody = bytes.Repeat([]byte("x"), 1024)

// handleStatic answers with a fixed 1 KiB body and nothing else: the cost of
// net/http alone, for comparison with the groupcache routes.
func handleStatic(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(staticBody)))
	if _, err := w.Write(staticBody); err != nil {
		log.Printf("writing body: %v", err)
	}
}

// valueFor is the getter's value for label (the key, with its group's prefix
// under -groups): "go:"+label, padded with '.' or cut to exactly n bytes when
// n > 0.
func valueFor(label string, n int) []byte {
	value := []byte("go:" + label)
	if n <= 0 {
		return value
	}
	if len(value) >= n {
		return value[:n]
	}
	return append(value, bytes.Repeat([]byte("."), n-len(value))...)
}

// groupOf returns the group a control request names with ?group= (by default
// the first), or answers 404 and returns nil when the peer has no such group.
func (p *peer) groupOf(w http.ResponseWriter, r *http.Request) *served {
	name := p.first
	if q := r.URL.Query(); q.Has("group") {
		name = q.Get("group")
	}
	g, ok := p.groups[name]
	if !ok {
		http.Error(w, "no such group: "+name, http.StatusNotFound)
		return nil
	}
	return g
}

func (p *peer) handleLoads(w http.ResponseWriter, r *http.Request) {
	if g := p.groupOf(w, r); g != nil {
		writeJSON(w, http.StatusOK, g.loads.snapshot())
	}
}

// cacheStatsJSON converts groupcache.CacheStats to a JSON-ready map.
func cacheStatsJSON(s groupcache.CacheStats) map[string]int64 {
	return map[string]int64{
		"bytes":     s.Bytes,
		"items":     s.Items,
		"gets":      s.Gets,
		"hits":      s.Hits,
		"evictions": s.Evictions,
	}
}

// handleStats reports the group's Stats (read atomically) and its cache stats.
func (p *peer) handleStats(w http.ResponseWriter, r *http.Request) {
	g := p.groupOf(w, r)
	if g == nil {
		return
	}
	s := &g.group.Stats
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"group": g.group.Name(),
		"stats": map[string]int64{
			"gets":            s.Gets.Get(),
			"cache_hits":      s.CacheHits.Get(),
			"peer_loads":      s.PeerLoads.Get(),
			"peer_errors":     s.PeerErrors.Get(),
			"loads":           s.Loads.Get(),
			"loads_deduped":   s.LoadsDeduped.Get(),
			"local_loads":     s.LocalLoads.Get(),
			"local_load_errs": s.LocalLoadErrs.Get(),
			"server_requests": s.ServerRequests.Get(),
		},
		"main_cache": cacheStatsJSON(g.group.CacheStats(groupcache.MainCache)),
		"hot_cache":  cacheStatsJSON(g.group.CacheStats(groupcache.HotCache)),
	})
}

// handleOwner reports which peer golang/groupcache's ring picks for a key,
// computed with consistenthash.New(50, nil) over the peer list last POSTed to
// /peers, in the same order, as HTTPPool.Set does. The response is
//
//	{"key": K, "owner": URL, "is_self": bool, "peers": [...]}
//
// "owner" is the exact peer URL from the list. "is_self" is true when owner
// equals this replica's -self URL, or when the list is empty (owner is then
// ""): in both cases HTTPPool.PickPeer declines and the key is loaded locally.
func (p *peer) handleOwner(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if _, ok := q["key"]; !ok {
		http.Error(w, "missing key parameter", http.StatusBadRequest)
		return
	}
	key := q.Get("key")
	p.mu.Lock()
	peers := append([]string{}, p.peers...)
	p.mu.Unlock()
	ring := consistenthash.New(replicas, nil)
	ring.Add(peers...)
	owner := ring.Get(key)
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"key":     key,
		"owner":   owner,
		"is_self": owner == "" || owner == p.self,
		"peers":   peers,
	})
}
