/*
 * headers.c - header field syntax and token helpers.
 *
 * Everything here is a pure function over borrowed ranges: no allocation, no
 * global state other than the constant character tables below.
 */
#include "proxy/headers.h"

#include <arpa/inet.h>
#include <string.h>

#include "proxy/buf.h"

/*
 * RFC 9110 §5.6.2:
 *   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
 */
/* clang-format off */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,  ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,  ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,  ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1,  ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,  ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,  ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1,  ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};
/* clang-format on */

static bool is_tchar(char c)
{
    return tchar[(unsigned char)c] != 0;
}

/* field-vchar = VCHAR / obs-text (RFC 9110 §5.5); SP and HTAB handled by callers. */
static bool is_field_vchar(char c)
{
    unsigned char u = (unsigned char)c;
    return (u > 0x20 && u < 0x7f) || u >= 0x80;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* Case-insensitive equality of two ranges. */
static bool iov_ieq(struct tg_iov a, struct tg_iov b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (lower(a.base[i]) != lower(b.base[i]))
            return false;
    return true;
}

bool tg_header_name_valid(struct tg_iov name)
{
    if (name.len == 0)
        return false;
    for (size_t i = 0; i < name.len; i++)
        if (!is_tchar(name.base[i]))
            return false;
    return true;
}

bool tg_header_name_valid_lower(struct tg_iov name)
{
    if (!tg_header_name_valid(name))
        return false;
    for (size_t i = 0; i < name.len; i++)
        if (name.base[i] >= 'A' && name.base[i] <= 'Z')
            return false;
    return true;
}

bool tg_header_value_valid(struct tg_iov value)
{
    if (value.len == 0)
        return true;
    /* RFC 9110 §5.5: field-value has no leading or trailing whitespace. */
    if (is_ows(value.base[0]) || is_ows(value.base[value.len - 1]))
        return false;
    for (size_t i = 0; i < value.len; i++) {
        char c = value.base[i];
        if (!is_field_vchar(c) && !is_ows(c))
            return false;
    }
    return true;
}

bool tg_method_valid(struct tg_iov method)
{
    return tg_header_name_valid(method);
}

bool tg_target_valid(struct tg_iov target)
{
    if (target.len == 1 && target.base[0] == '*')
        return true;
    if (target.len == 0 || target.base[0] != '/')
        return false;
    for (size_t i = 0; i < target.len; i++) {
        unsigned char u = (unsigned char)target.base[i];
        if (u <= 0x20 || u >= 0x7f)
            return false;
    }
    return true;
}

/*
 * RFC 3986 §3.2.2 reg-name, restricted to unreserved and pct-encoded: the
 * sub-delims ("!$&'()*+,;=") are legal there but no real host name uses them,
 * and they are exactly what an injection into a downstream Host would need.
 * An IPv4 literal is a reg-name syntactically.
 */
static bool reg_name_valid(const char *p, size_t n)
{
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
            continue;
        if (c == '%' && i + 2 < n && is_hex(p[i + 1]) && is_hex(p[i + 2])) {
            i += 2;
            continue;
        }
        return false;
    }
    return true;
}

/* "[" IPv6address "]"; IPvFuture and zone ids are refused. */
static bool ip_literal_valid(const char *p, size_t n)
{
    char tmp[INET6_ADDRSTRLEN];
    unsigned char addr[16];

    if (n < 2 + 2 || p[0] != '[' || p[n - 1] != ']' || n - 2 >= sizeof(tmp))
        return false;
    for (size_t i = 1; i + 1 < n; i++)
        if (!is_hex(p[i]) && p[i] != ':' && p[i] != '.')
            return false;
    memcpy(tmp, p + 1, n - 2);
    tmp[n - 2] = '\0';
    return inet_pton(AF_INET6, tmp, addr) == 1;
}

bool tg_authority_valid(struct tg_iov authority)
{
    const char *p = authority.base;
    size_t n = authority.len, host_len = n;

    if (n == 0)
        return false;
    /* A reg-name holds no ':', an IP literal ends at ']'; a port may follow either. */
    if (p[0] == '[') {
        const char *rb = memchr(p, ']', n);
        if (rb == NULL)
            return false;
        host_len = (size_t)(rb - p) + 1;
        if (host_len < n && p[host_len] != ':')
            return false;
    } else {
        const char *colon = memchr(p, ':', n);
        if (colon != NULL)
            host_len = (size_t)(colon - p);
    }
    if (host_len < n) {
        size_t port_len = n - host_len - 1;
        unsigned long port = 0;
        /* port = *DIGIT, but an empty port is pointless here: refuse it. */
        if (port_len == 0 || port_len > 5)
            return false;
        for (size_t i = host_len + 1; i < n; i++) {
            if (!is_digit(p[i]))
                return false;
            port = port * 10 + (unsigned long)(p[i] - '0');
        }
        if (port > 65535)
            return false;
    }
    if (p[0] == '[')
        return ip_literal_valid(p, host_len);
    return reg_name_valid(p, host_len);
}

/* Connection-specific fields (RFC 9110 §7.6.1, RFC 9113 §8.2.2), plus Host. */
static const struct {
    const char *name; /* lowercase field name */
    size_t len;       /* its length */
} hop_by_hop[] = {
    {"connection", 10},
    {"keep-alive", 10},
    {"proxy-connection", 16},
    {"transfer-encoding", 17},
    {"te", 2},
    {"upgrade", 7},
    {"trailer", 7},
    {"proxy-authenticate", 18},
    {"proxy-authorization", 19},
    {"http2-settings", 14},
    {"host", 4},
};

bool tg_header_is_hop_by_hop(struct tg_iov name)
{
    for (size_t i = 0; i < sizeof(hop_by_hop) / sizeof(hop_by_hop[0]); i++)
        if (iov_ieq(name, tg_iov_make(hop_by_hop[i].name, hop_by_hop[i].len)))
            return true;
    return false;
}

/*
 * RFC 9110 §5.6.1: #element lists; empty elements and OWS around the commas
 * are allowed and ignored.
 */
bool tg_token_list_has(struct tg_iov list, struct tg_iov name)
{
    size_t i = 0;

    while (i < list.len) {
        size_t start, end;
        while (i < list.len && (is_ows(list.base[i]) || list.base[i] == ','))
            i++;
        start = i;
        while (i < list.len && list.base[i] != ',')
            i++;
        end = i;
        while (end > start && is_ows(list.base[end - 1]))
            end--;
        if (end > start && iov_ieq(tg_iov_make(list.base + start, end - start), name))
            return true;
    }
    return false;
}

bool tg_request_id_sane(struct tg_iov id)
{
    if (id.len == 0 || id.len > 128)
        return false;
    for (size_t i = 0; i < id.len; i++) {
        char c = id.base[i];
        if (!is_alnum(c) && c != '.' && c != '_' && c != ':' && c != '-')
            return false;
    }
    return true;
}

void tg_lowercase(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = lower(src[i]);
}

bool tg_path_is_normal(struct tg_iov target)
{
    size_t end = 0;
    while (end < target.len && target.base[end] != '?')
        end++;
    const char *p = target.base;
    for (size_t i = 0; i < end; i++) {
        char ch = p[i];
        if (ch == '\\')
            return false;
        if (ch == '%' && i + 2 < end) {
            char a = p[i + 1], b = (char)(p[i + 2] | 0x20);
            if ((a == '2' && (b == 'e' || b == 'f')) || (a == '5' && b == 'c'))
                return false;
        }
        if (ch == '/' && i + 1 < end && p[i + 1] == '.') {
            /* "/." or "/.." followed by the end or '/': a dot segment. */
            size_t j = i + 2;
            if (j < end && p[j] == '.')
                j++;
            if (j == end || p[j] == '/')
                return false;
        }
    }
    return true;
}
