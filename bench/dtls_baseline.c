/*
 * dtls_baseline: the C side of the m2msec DTLS benchmark (bench/dtls_bench.py), built against the system libssl.
 *
 * Two modes in one binary:
 *
 *   dtls_baseline server [-m MTU] [-t HS_TIMEOUT] [-w CLOSE_WAIT] HOST PORT IDENTITY KEYHEX CIPHERS
 *   dtls_baseline client [-t TIMEOUT] [-f MAXFAIL] [-H HOST] PORT N CIPHER IDENTITY KEYHEX
 *
 * server: a DTLS 1.2 PSK server on one UDP socket (PORT 0 = any free port; it prints
 *   "dtls_baseline server on HOST:PORT" once bound). Every datagram is read with recvfrom() and every record
 *   leaves with sendto() on that socket, through memory BIOs, the way the m2msec gateway does it:
 *   - a datagram from an address that is not the current peer goes to a listener SSL object through
 *     DTLSv1_listen(): a ClientHello without a valid cookie is answered with a HelloVerifyRequest and nothing
 *     is kept (RFC 6347 §4.2.1; the cookie is HMAC-SHA256 over the peer's address and port with a random
 *     secret, truncated to 16 bytes); a ClientHello with a valid cookie makes that SSL object the current
 *     peer (one peer at a time: a newcomer with a valid cookie replaces the previous peer);
 *   - datagrams of the current peer drive SSL_do_handshake(), then SSL_read(); its close_notify ends the
 *     association (no close_notify is sent back, as in the gateway); so does CLOSE_WAIT seconds of silence
 *     after the handshake (default 10) or HS_TIMEOUT seconds without completing it (default 10);
 *   - the pending records are packed whole into datagrams of at most MTU bytes (default 1200, as in the
 *     gateway); retransmission follows DTLSv1_get_timeout()/DTLSv1_handle_timeout().
 *   PSK: only IDENTITY, with the key KEYHEX. CIPHERS: an OpenSSL cipher list (":@SECLEVEL=0" is appended: OpenSSL
 *   >= 3.2 ranks the 64-bit-tag CCM_8 suites below level 1; it changes nothing for PSK suites on 3.0).
 *   On SIGTERM or SIGINT it prints one line of counters on stdout and exits 0.
 *
 * client: N sequential full DTLS 1.2 PSK handshakes against 127.0.0.1:PORT (or -H HOST), each on a NEW UDP
 *   socket (so a new source port), through a datagram BIO: SSL_connect with its own ppoll() loop driving the
 *   retransmission timers, at most TIMEOUT seconds per handshake (default 30). Each handshake is checked
 *   (DTLS 1.2, the requested CIPHER, not resumed), then close_notify is sent (one SSL_shutdown call, not
 *   waiting for the server's) and the socket closed. With -f, it stops after MAXFAIL failures. Output (one
 *   line on stdout):
 *     handshakes=N ok=K failures=F wall_s=T hs_per_s=R retransmits=X cipher=NAME
 *   where N counts the handshakes attempted, R = N / T and X the client's retransmission timeouts. The exit
 *   status is 0 when F == 0, 1 otherwise (the first few failures are described on stderr), 2 on a usage or
 *   setup error.
 */
#define _GNU_SOURCE /* ppoll */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_KEY 256
#define MAX_REPORTED 5
#define COOKIE_LEN 16
#define DTLS_HEADER 13 /* RFC 6347 §4.1: type, version, epoch, sequence_number (6), length */
#define BUF_SIZE (64 * 1024)

static const char *g_identity;
static unsigned char g_key[MAX_KEY];
static size_t g_key_len;

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_hex(const char *hex, unsigned char *out, size_t max, size_t *out_len) {
    size_t n = strlen(hex);
    if (n == 0 || n % 2 != 0 || n / 2 > max)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned int byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
            return -1;
        out[i] = (unsigned char)byte;
    }
    *out_len = n / 2;
    return 0;
}

/* wait until fd is readable or `seconds` have passed (< 0: no limit); ppoll() keeps the timers' microseconds */
static int wait_readable(int fd, double seconds) {
    struct pollfd p = {fd, POLLIN, 0};
    if (seconds < 0)
        return ppoll(&p, 1, NULL, NULL);
    if (seconds > 3600.0)
        seconds = 3600.0;
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    return ppoll(&p, 1, &ts, NULL);
}

/* ============================================================================================== server */

static unsigned char g_cookie_secret[32];
static struct sockaddr_in g_cookie_peer; /* the source of the datagram being given to DTLSv1_listen */
static volatile sig_atomic_t g_stop;

static struct {
    long hello_verify;   /* HelloVerifyRequests sent */
    long handshakes;     /* handshakes completed */
    long failures;       /* handshakes that failed with an error */
    long hs_timeouts;    /* handshakes abandoned after HS_TIMEOUT */
    long close_notify;   /* associations ended by the client's close_notify */
    long close_wait;     /* associations ended by CLOSE_WAIT seconds of silence */
    long replaced;       /* associations ended by a newcomer's cookie ClientHello */
    long datagrams_in, datagrams_out;
} g_stats;

typedef enum { PEER_NONE, PEER_HANDSHAKE, PEER_ESTABLISHED } peer_phase;

typedef struct {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
} endpoint;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void cookie_for(const struct sockaddr_in *peer, unsigned char out[EVP_MAX_MD_SIZE]) {
    unsigned char data[8];
    unsigned int len = 0;
    uint16_t family = (uint16_t)peer->sin_family;
    memcpy(data, &family, 2);
    memcpy(data + 2, &peer->sin_port, 2);
    memcpy(data + 4, &peer->sin_addr, 4);
    HMAC(EVP_sha256(), g_cookie_secret, sizeof g_cookie_secret, data, sizeof data, out, &len);
}

static int cookie_generate_cb(SSL *ssl, unsigned char *cookie, unsigned int *cookie_len) {
    (void)ssl;
    unsigned char mac[EVP_MAX_MD_SIZE];
    cookie_for(&g_cookie_peer, mac);
    memcpy(cookie, mac, COOKIE_LEN);
    *cookie_len = COOKIE_LEN;
    return 1;
}

static int cookie_verify_cb(SSL *ssl, const unsigned char *cookie, unsigned int cookie_len) {
    (void)ssl;
    unsigned char mac[EVP_MAX_MD_SIZE];
    if (cookie_len != COOKIE_LEN)
        return 0;
    cookie_for(&g_cookie_peer, mac);
    return CRYPTO_memcmp(mac, cookie, COOKIE_LEN) == 0;
}

static unsigned int psk_server_cb(SSL *ssl, const char *identity, unsigned char *psk, unsigned int max_psk_len) {
    (void)ssl;
    if (identity == NULL || strcmp(identity, g_identity) != 0 || g_key_len > max_psk_len)
        return 0; /* unknown identity: OpenSSL sends unknown_psk_identity */
    memcpy(psk, g_key, g_key_len);
    return (unsigned int)g_key_len;
}

static int new_endpoint(SSL_CTX *ctx, long mtu, endpoint *ep) {
    ep->ssl = SSL_new(ctx);
    ep->rbio = BIO_new(BIO_s_mem());
    ep->wbio = BIO_new(BIO_s_mem());
    if (!ep->ssl || !ep->rbio || !ep->wbio)
        return -1;
    BIO_set_mem_eof_return(ep->rbio, -1); /* empty = "want read", not EOF */
    BIO_set_mem_eof_return(ep->wbio, -1);
    SSL_set_bio(ep->ssl, ep->rbio, ep->wbio);
    SSL_set_mtu(ep->ssl, mtu);
    SSL_set_accept_state(ep->ssl);
    return 0;
}

static void free_endpoint(endpoint *ep) {
    SSL_free(ep->ssl); /* frees both BIOs */
    memset(ep, 0, sizeof *ep);
}

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b) {
    return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

/* a handshake record in epoch 0 whose first message is a ClientHello (RFC 6347 §4.1, §4.2.2) */
static int is_initial_client_hello(const unsigned char *d, size_t n) {
    return n > 25 && d[0] == 22 && d[3] == 0 && d[4] == 0 && d[13] == 1;
}

/* send what the SSL object wrote: whole records, packed into datagrams of at most mtu bytes */
static void flush_out(int fd, endpoint *ep, const struct sockaddr_in *to, long mtu) {
    static unsigned char out[BUF_SIZE];
    size_t len = 0;
    int n;
    while (len < sizeof out && (n = BIO_read(ep->wbio, out + len, (int)(sizeof out - len))) > 0)
        len += (size_t)n;
    size_t start = 0, pos = 0;
    while (pos + DTLS_HEADER <= len) {
        size_t rec = DTLS_HEADER + ((size_t)out[pos + 11] << 8 | out[pos + 12]);
        if (pos + rec > len)
            break;
        if (pos > start && pos + rec - start > (size_t)mtu) {
            sendto(fd, out + start, pos - start, 0, (const struct sockaddr *)to, sizeof *to);
            g_stats.datagrams_out++;
            start = pos;
        }
        pos += rec;
    }
    if (pos > start) {
        sendto(fd, out + start, pos - start, 0, (const struct sockaddr *)to, sizeof *to);
        g_stats.datagrams_out++;
    }
}

static void report(long count, const struct sockaddr_in *peer, const char *what) {
    if (count <= MAX_REPORTED) {
        char host[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &peer->sin_addr, host, sizeof host);
        fprintf(stderr, "peer %s:%u: %s\n", host, ntohs(peer->sin_port), what);
        ERR_print_errors_fp(stderr);
        fflush(stderr);
    }
    ERR_clear_error();
}

typedef struct {
    int fd;
    long mtu;
    double hs_timeout, close_wait;
    SSL_CTX *ctx;
    endpoint listener;
    endpoint cur;
    peer_phase phase;
    struct sockaddr_in cur_addr;
    double deadline;
} server;

static void end_peer(server *s) {
    if (s->phase != PEER_NONE)
        free_endpoint(&s->cur);
    s->phase = PEER_NONE;
}

/* after data for the current peer went into its read BIO */
static void drive_peer(server *s) {
    if (s->phase == PEER_HANDSHAKE) {
        int rc = SSL_do_handshake(s->cur.ssl);
        if (rc != 1) {
            int err = SSL_get_error(s->cur.ssl, rc);
            flush_out(s->fd, &s->cur, &s->cur_addr, s->mtu); /* next flight, or an alert */
            if (err != SSL_ERROR_WANT_READ) {
                report(++g_stats.failures, &s->cur_addr, "handshake failed");
                end_peer(s);
            }
            return;
        }
        g_stats.handshakes++;
        s->phase = PEER_ESTABLISHED;
        s->deadline = monotonic_s() + s->close_wait;
    }
    unsigned char buf[2048];
    for (;;) {
        int n = SSL_read(s->cur.ssl, buf, sizeof buf);
        if (n > 0)
            continue; /* application data: not expected, ignored */
        int err = SSL_get_error(s->cur.ssl, n);
        flush_out(s->fd, &s->cur, &s->cur_addr, s->mtu); /* e.g. the last flight again */
        if (err == SSL_ERROR_WANT_READ)
            return;
        if (err == SSL_ERROR_ZERO_RETURN) {
            g_stats.close_notify++;
        } else {
            report(++g_stats.failures, &s->cur_addr, "record error after the handshake");
        }
        ERR_clear_error();
        end_peer(s);
        return;
    }
}

static void on_datagram(server *s, const unsigned char *d, size_t n, const struct sockaddr_in *from) {
    g_stats.datagrams_in++;
    if (s->phase != PEER_NONE && same_addr(from, &s->cur_addr) &&
        !(s->phase == PEER_ESTABLISHED && is_initial_client_hello(d, n))) {
        BIO_write(s->cur.rbio, d, (int)n);
        drive_peer(s);
        return;
    }
    /* not the current peer (or the current address starting over): stateless until the cookie is back */
    g_cookie_peer = *from;
    BIO_write(s->listener.rbio, d, (int)n);
    BIO_ADDR *client = BIO_ADDR_new();
    int rc = DTLSv1_listen(s->listener.ssl, client);
    BIO_ADDR_free(client);
    if (rc <= 0) {
        if (BIO_ctrl_pending(s->listener.wbio) > 0)
            g_stats.hello_verify++;
        flush_out(s->fd, &s->listener, from, s->mtu);
        (void)BIO_reset(s->listener.rbio);
        ERR_clear_error();
        if (rc < 0) { /* the listener is unusable: make a new one */
            free_endpoint(&s->listener);
            if (new_endpoint(s->ctx, s->mtu, &s->listener) != 0) {
                fprintf(stderr, "cannot create an SSL object\n");
                exit(2);
            }
        }
        return;
    }
    if (s->phase != PEER_NONE) {
        g_stats.replaced++;
        end_peer(s);
    }
    s->cur = s->listener;
    s->cur_addr = *from;
    s->phase = PEER_HANDSHAKE;
    s->deadline = monotonic_s() + s->hs_timeout;
    if (new_endpoint(s->ctx, s->mtu, &s->listener) != 0) {
        fprintf(stderr, "cannot create an SSL object\n");
        exit(2);
    }
    drive_peer(s);
}

static void on_timer(server *s) {
    if (s->phase == PEER_NONE)
        return;
    double now = monotonic_s();
    if (now >= s->deadline) {
        if (s->phase == PEER_HANDSHAKE) {
            g_stats.hs_timeouts++;
            report(g_stats.hs_timeouts, &s->cur_addr, "handshake timed out");
        } else {
            g_stats.close_wait++;
        }
        end_peer(s);
        return;
    }
    if (s->phase == PEER_HANDSHAKE) {
        int rc = DTLSv1_handle_timeout(s->cur.ssl);
        flush_out(s->fd, &s->cur, &s->cur_addr, s->mtu);
        if (rc < 0) {
            report(++g_stats.failures, &s->cur_addr, "retransmissions exhausted");
            end_peer(s);
        }
    }
}

static double next_wait(server *s) {
    if (s->phase == PEER_NONE)
        return -1;
    double wait = s->deadline - monotonic_s();
    struct timeval tv;
    if (s->phase == PEER_HANDSHAKE && DTLSv1_get_timeout(s->cur.ssl, &tv)) {
        double t = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
        if (t < wait)
            wait = t;
    }
    return wait < 0 ? 0 : wait;
}

static int server_main(int argc, char **argv) {
    long mtu = 1200;
    double hs_timeout = 10.0, close_wait = 10.0;
    int opt;
    while ((opt = getopt(argc, argv, "m:t:w:")) != -1) {
        if (opt == 'm')
            mtu = atol(optarg);
        else if (opt == 't')
            hs_timeout = atof(optarg);
        else if (opt == 'w')
            close_wait = atof(optarg);
        else
            goto usage;
    }
    if (argc - optind != 5)
        goto usage;
    const char *host = argv[optind];
    int port = atoi(argv[optind + 1]);
    g_identity = argv[optind + 2];
    const char *ciphers = argv[optind + 4];
    if (port < 0 || port > 65535 || mtu < 256 || mtu > 65000 || hs_timeout <= 0 || close_wait <= 0 ||
        parse_hex(argv[optind + 3], g_key, MAX_KEY, &g_key_len))
        goto usage;

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "invalid IPv4 address %s\n", host);
        return 2;
    }
    if (RAND_bytes(g_cookie_secret, sizeof g_cookie_secret) != 1) {
        fprintf(stderr, "RAND_bytes failed\n");
        return 2;
    }

    char cipher_list[1024];
    snprintf(cipher_list, sizeof cipher_list, "%s:@SECLEVEL=0", ciphers);
    SSL_CTX *ctx = SSL_CTX_new(DTLS_server_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, DTLS1_2_VERSION) || !SSL_CTX_set_cipher_list(ctx, cipher_list)) {
        fprintf(stderr, "cannot configure the server for ciphers %s\n", cipher_list);
        ERR_print_errors_fp(stderr);
        return 2;
    }
    /* the same choices as m2msec's TLSContext: no tickets, no resumption, server preference, no MTU query */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_QUERY_MTU | SSL_OP_COOKIE_EXCHANGE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_set_psk_server_callback(ctx, psk_server_cb);
    SSL_CTX_set_cookie_generate_cb(ctx, cookie_generate_cb);
    SSL_CTX_set_cookie_verify_cb(ctx, cookie_verify_cb);

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("udp socket");
        return 2;
    }
    socklen_t alen = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &alen);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: ppoll() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    server s;
    memset(&s, 0, sizeof s);
    s.fd = fd;
    s.mtu = mtu;
    s.hs_timeout = hs_timeout;
    s.close_wait = close_wait;
    s.ctx = ctx;
    s.phase = PEER_NONE;
    if (new_endpoint(ctx, mtu, &s.listener) != 0) {
        fprintf(stderr, "cannot create an SSL object\n");
        return 2;
    }
    printf("dtls_baseline server on %s:%u (%s)\n", host, ntohs(addr.sin_port), OpenSSL_version(OPENSSL_VERSION));
    fflush(stdout);

    static unsigned char buf[BUF_SIZE];
    while (!g_stop) {
        int pr = wait_readable(fd, next_wait(&s));
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            perror("ppoll");
            return 2;
        }
        if (pr > 0) {
            for (;;) {
                struct sockaddr_in from;
                socklen_t flen = sizeof from;
                ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
                if (n < 0)
                    break; /* EAGAIN (or an ICMP error for an earlier sendto: nothing to do) */
                if (flen == sizeof from && from.sin_family == AF_INET)
                    on_datagram(&s, buf, (size_t)n, &from);
            }
        }
        if (pr == 0 || (s.phase != PEER_NONE && monotonic_s() >= s.deadline))
            on_timer(&s); /* retransmission and deadlines */
    }
    end_peer(&s);
    free_endpoint(&s.listener);
    printf("handshakes=%ld failures=%ld hs_timeouts=%ld hello_verify=%ld close_notify=%ld close_wait=%ld "
           "replaced=%ld datagrams_in=%ld datagrams_out=%ld\n",
           g_stats.handshakes, g_stats.failures, g_stats.hs_timeouts, g_stats.hello_verify, g_stats.close_notify,
           g_stats.close_wait, g_stats.replaced, g_stats.datagrams_in, g_stats.datagrams_out);
    SSL_CTX_free(ctx);
    close(fd);
    return 0;

usage:
    fprintf(stderr, "usage: dtls_baseline server [-m MTU] [-t HS_TIMEOUT] [-w CLOSE_WAIT] HOST PORT IDENTITY KEYHEX "
                    "CIPHERS\n");
    return 2;
}

/* ============================================================================================== client */

static unsigned int psk_client_cb(SSL *ssl, const char *hint, char *identity, unsigned int max_identity_len,
                                  unsigned char *psk, unsigned int max_psk_len) {
    (void)ssl;
    (void)hint;
    size_t id_len = strlen(g_identity);
    if (id_len + 1 > max_identity_len || g_key_len > max_psk_len)
        return 0;
    memcpy(identity, g_identity, id_len + 1);
    memcpy(psk, g_key, g_key_len);
    return (unsigned int)g_key_len;
}

static void client_failure(long *failures, long i, const char *what) {
    (*failures)++;
    if (*failures <= MAX_REPORTED) {
        fprintf(stderr, "handshake %ld: %s\n", i, what);
        ERR_print_errors_fp(stderr);
    }
    ERR_clear_error();
}

/* one handshake on a new socket; returns NULL on success, else what failed */
static const char *one_handshake(SSL_CTX *ctx, const struct sockaddr_in *addr, BIO_ADDR *peer, double timeout,
                                 const char *cipher, long *retransmits) {
    const char *failure = NULL;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        perror("socket");
        exit(2);
    }
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) { /* binds a new ephemeral port */
        close(fd);
        return "connect() failed";
    }
    BIO *bio = BIO_new_dgram(fd, BIO_NOCLOSE);
    BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, peer);
    SSL *ssl = SSL_new(ctx);
    SSL_set_bio(ssl, bio, bio);
    SSL_set_mtu(ssl, 1200);
    double deadline = monotonic_s() + timeout;
    for (;;) {
        int rc = SSL_connect(ssl);
        if (rc == 1)
            break;
        int err = SSL_get_error(ssl, rc);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
            failure = err == SSL_ERROR_SYSCALL ? "SSL_connect failed (socket error, e.g. ICMP port unreachable)"
                                               : "SSL_connect failed";
            break;
        }
        double left = deadline - monotonic_s();
        if (left <= 0) {
            failure = "no handshake within the timeout";
            break;
        }
        struct timeval tv;
        double wait = left;
        if (DTLSv1_get_timeout(ssl, &tv)) {
            double t = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
            if (t < wait)
                wait = t;
        }
        int pr = wait_readable(fd, wait);
        if (pr < 0 && errno != EINTR) {
            failure = "ppoll() failed";
            break;
        }
        if (pr == 0) {
            int h = DTLSv1_handle_timeout(ssl);
            if (h > 0)
                (*retransmits)++;
            else if (h < 0) {
                failure = "retransmissions exhausted";
                break;
            }
        }
    }
    if (failure == NULL) {
        if (SSL_version(ssl) != DTLS1_2_VERSION)
            failure = "not DTLS 1.2";
        else if (SSL_session_reused(ssl))
            failure = "session was resumed (not a full handshake)";
        else if (strcmp(SSL_get_cipher_name(ssl), cipher) != 0)
            failure = "unexpected cipher";
        else
            SSL_shutdown(ssl); /* sends close_notify; does not wait for the server's */
    }
    SSL_free(ssl); /* frees the BIO, not the socket */
    close(fd);
    return failure;
}

static int client_main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    double timeout = 30.0;
    long max_failures = 0; /* 0: no limit */
    int opt;
    while ((opt = getopt(argc, argv, "t:f:H:")) != -1) {
        if (opt == 't')
            timeout = atof(optarg);
        else if (opt == 'f')
            max_failures = atol(optarg);
        else if (opt == 'H')
            host = optarg;
        else
            goto usage;
    }
    if (argc - optind != 5)
        goto usage;
    int port = atoi(argv[optind]);
    long n = atol(argv[optind + 1]);
    const char *cipher = argv[optind + 2];
    g_identity = argv[optind + 3];
    if (port <= 0 || port > 65535 || n <= 0 || timeout <= 0 ||
        parse_hex(argv[optind + 4], g_key, MAX_KEY, &g_key_len))
        goto usage;
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "invalid IPv4 address %s\n", host);
        return 2;
    }
    BIO_ADDR *peer = BIO_ADDR_new();
    BIO_ADDR_rawmake(peer, AF_INET, &addr.sin_addr, sizeof addr.sin_addr, addr.sin_port);

    char cipher_list[512];
    snprintf(cipher_list, sizeof cipher_list, "%s:@SECLEVEL=0", cipher);
    SSL_CTX *ctx = SSL_CTX_new(DTLS_client_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, DTLS1_2_VERSION) || !SSL_CTX_set_cipher_list(ctx, cipher_list)) {
        fprintf(stderr, "cannot configure the client for cipher %s\n", cipher);
        ERR_print_errors_fp(stderr);
        return 2;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU);
    SSL_CTX_set_psk_client_callback(ctx, psk_client_cb);

    long ok = 0, failures = 0, retransmits = 0, i;
    double t0 = monotonic_s();
    for (i = 0; i < n && (max_failures <= 0 || failures < max_failures); i++) {
        const char *failure = one_handshake(ctx, &addr, peer, timeout, cipher, &retransmits);
        if (failure == NULL)
            ok++;
        else
            client_failure(&failures, i, failure);
    }
    double dt = monotonic_s() - t0;
    if (i < n)
        fprintf(stderr, "stopped after %ld failures (-f)\n", failures);
    printf("handshakes=%ld ok=%ld failures=%ld wall_s=%.6f hs_per_s=%.1f retransmits=%ld cipher=%s\n", i, ok,
           failures, dt, (double)i / dt, retransmits, ok > 0 ? cipher : "-");
    BIO_ADDR_free(peer);
    SSL_CTX_free(ctx);
    return failures == 0 ? 0 : 1;

usage:
    fprintf(stderr, "usage: dtls_baseline client [-t TIMEOUT] [-f MAXFAIL] [-H HOST] PORT N CIPHER IDENTITY KEYHEX\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "server") == 0)
        return server_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "client") == 0)
        return client_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: dtls_baseline server|client ... (see the comment at the top of dtls_baseline.c)\n");
    return 2;
}
