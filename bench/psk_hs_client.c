/*
 * psk_hs_client: N sequential full TLS 1.2 or TLS 1.3 PSK handshakes against a loopback server.
 *
 * Part of the m2msec handshake benchmark (bench/handshake_bench.py). The same binary is pointed at
 * the C OpenSSL baseline server and at the m2msec gateway, so the server is the only difference.
 *
 * Usage: psk_hs_client [-e] [-H host] PORT N CIPHER IDENTITY KEYHEX
 *   CIPHER    one OpenSSL TLS 1.2 cipher name, e.g. PSK-AES128-CBC-SHA256 or PSK-AES128-GCM-SHA256, or a
 *             TLS 1.3 ciphersuite name (TLS_AES_128_GCM_SHA256): then a TLS 1.3 external-PSK handshake,
 *             psk_dhe_ke (OpenSSL's default key exchange mode: an (EC)DHE key share with the PSK)
 *   IDENTITY  psk_identity sent to the server
 *   KEYHEX    the PSK in hex
 *   -e        after the handshake, send 1 byte and wait for 1 byte back (the echo of
 *             bench/psk_baseline.c; only for a server that echoes)
 *   -H host   IPv4 address of the server (default 127.0.0.1)
 *
 * Each handshake: new TCP connection (TCP_NODELAY), new SSL object, no session or ticket (a full
 * handshake every time), SSL_connect, checks (the TLS version, the requested cipher, not resumed in TLS 1.2:
 * OpenSSL reports an external TLS 1.3 PSK as a resumed session, so that check is TLS 1.2 only), then
 * close_notify (one SSL_shutdown call, not waiting for the server's) and close().
 *
 * Output (one line on stdout):
 *   handshakes=N ok=K failures=F wall_s=T hs_per_s=R cipher=NAME
 * The exit status is 0 when F == 0. The first few failures are described on stderr.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_KEY 256
#define MAX_REPORTED_FAILURES 5

static const char *g_identity;
static unsigned char g_key[MAX_KEY];
static size_t g_key_len;

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

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

static void usage(void) {
    fprintf(stderr, "usage: psk_hs_client [-e] [-H host] PORT N CIPHER IDENTITY KEYHEX\n");
}

static void report_failure(long *failures, long i, const char *what) {
    (*failures)++;
    if (*failures <= MAX_REPORTED_FAILURES) {
        fprintf(stderr, "handshake %ld: %s\n", i, what);
        ERR_print_errors_fp(stderr);
    }
    ERR_clear_error();
}

int main(int argc, char **argv) {
    int echo = 0;
    const char *host = "127.0.0.1";
    int opt;
    while ((opt = getopt(argc, argv, "eH:")) != -1) {
        if (opt == 'e')
            echo = 1;
        else if (opt == 'H')
            host = optarg;
        else {
            usage();
            return 2;
        }
    }
    if (argc - optind != 5) {
        usage();
        return 2;
    }
    int port = atoi(argv[optind]);
    long n = atol(argv[optind + 1]);
    const char *cipher = argv[optind + 2];
    g_identity = argv[optind + 3];
    if (port <= 0 || port > 65535 || n <= 0 || parse_hex(argv[optind + 4], g_key, MAX_KEY, &g_key_len)) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "invalid IPv4 address %s\n", host);
        return 2;
    }

    int tls13 = strncmp(cipher, "TLS_", 4) == 0;
    int version = tls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, version) || !SSL_CTX_set_max_proto_version(ctx, version) ||
        !(tls13 ? SSL_CTX_set_ciphersuites(ctx, cipher) : SSL_CTX_set_cipher_list(ctx, cipher))) {
        fprintf(stderr, "cannot configure the client for cipher %s\n", cipher);
        ERR_print_errors_fp(stderr);
        return 2;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_psk_client_callback(ctx, psk_client_cb);

    long ok = 0, failures = 0;
    const char *negotiated = "-";
    double t0 = monotonic_s();
    for (long i = 0; i < n; i++) {
        int one = 1;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("socket");
            return 2;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
            perror("connect");
            close(fd);
            report_failure(&failures, i, "TCP connect failed");
            continue;
        }
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        if (SSL_connect(ssl) != 1) {
            report_failure(&failures, i, "SSL_connect failed");
        } else if (SSL_version(ssl) != version) {
            report_failure(&failures, i, tls13 ? "not TLS 1.3" : "not TLS 1.2");
        } else if (!tls13 && SSL_session_reused(ssl)) {
            report_failure(&failures, i, "session was resumed (not a full handshake)");
        } else if (strcmp(SSL_get_cipher_name(ssl), cipher) != 0) {
            report_failure(&failures, i, "unexpected cipher");
        } else {
            negotiated = SSL_get_cipher_name(ssl); /* static string owned by OpenSSL */
            int good = 1;
            if (echo) {
                char b = 'x';
                if (SSL_write(ssl, &b, 1) != 1 || SSL_read(ssl, &b, 1) != 1) {
                    report_failure(&failures, i, "echo failed");
                    good = 0;
                }
            }
            if (good) {
                ok++;
                SSL_shutdown(ssl); /* sends close_notify; does not wait for the server's */
            }
        }
        SSL_free(ssl);
        close(fd);
    }
    double dt = monotonic_s() - t0;
    printf("handshakes=%ld ok=%ld failures=%ld wall_s=%.6f hs_per_s=%.1f cipher=%s\n", n, ok, failures, dt,
           (double)n / dt, negotiated);
    SSL_CTX_free(ctx);
    return failures == 0 ? 0 : 1;
}
