/*
 * usage.c - incremental usage extraction, strip and cut for model responses.
 *
 * Memory class (STYLE §9c): one plain tg_mem object per response, holding at
 * most one SSE event (data <= TG_USAGE_EVENT_MAX, raw <= TG_USAGE_RAW_MAX)
 * and, for a JSON body, the raw "usage" object (<= TG_USAGE_JSON_MAX).
 *
 * Forwarding in transform mode is done by ranges of the caller's piece: in
 * one feed(), the bytes decided "forward" form the range [out, ev) and the
 * current undecided event starts at ev.  A dropped event flushes the range
 * and moves both marks past itself; a forwarded one just moves ev.  Only an
 * event that spans pieces is copied (into `held`), so whole events in one
 * piece reach the client without a copy.
 *
 * Why a CR at the end of a piece is remembered: "\r\n" is one line end even
 * when split, so an LF that starts the next piece belongs to the line (and
 * to the event) the CR ended; if that event was dropped, the LF goes too, and
 * the client's bytes do not depend on where the upstream split its writes.
 */
#include "filters/usage.h"

#include "proxy/buf.h"
#include "proxy/err.h"
#include "proxy/mem.h"

#include <jansson.h>
#include <string.h>
#include <time.h>

#define NAME_BAD 0xff /* the field name is not "data" */
#define JS_DEPTH 8    /* JSON levels whose keys are tracked */
#define KEY_MAX 24    /* longest key recognised */
#define TAIL_MAX 8192 /* synthesized tail: 2 events with id and model escaped (<= 6x 255 each) */

/* SSE line state. */
enum lstate {
    L_BOM,      /* stream start: maybe a UTF-8 BOM */
    L_START,    /* at the start of a line */
    L_NAME,     /* in a field name */
    L_VALUE_SP, /* after "data:", one space may follow */
    L_VALUE,    /* in a data value */
    L_SKIP,     /* in a comment or another field: to the line end */
};

/* What happens to an ended event. */
enum verdict {
    V_FORWARD,   /* forward its bytes */
    V_DROP,      /* strip it */
    V_CUT,       /* replace it with the synthesized end of stream */
    V_CUT_AFTER, /* forward it (already partly sent), then end the stream */
};

/* JSON scanner state between tokens. */
enum jstate {
    J_VALUE,  /* between tokens */
    J_STR,    /* in a string */
    J_SCALAR, /* in a number, true, false or null */
};

/* Keys the JSON scanner recognises (paths of usage and content strings). */
enum key {
    K_OTHER,
    K_ARR, /* an array element (wildcard in paths) */
    K_USAGE,
    K_CHOICES,
    K_MESSAGE,
    K_CONTENT,
    K_TEXT,
    K_REASONING_CONTENT,
    K_REFUSAL,
    K_TOOL_CALLS,
    K_FUNCTION,
    K_ARGUMENTS,
    K_OUTPUT,
    K_SUMMARY,
    K_END, /* path terminator */
};

static const char *const key_names[] = {
    [K_USAGE] = "usage",       [K_CHOICES] = "choices",
    [K_MESSAGE] = "message",   [K_CONTENT] = "content",
    [K_TEXT] = "text",         [K_REASONING_CONTENT] = "reasoning_content",
    [K_REFUSAL] = "refusal",   [K_TOOL_CALLS] = "tool_calls",
    [K_FUNCTION] = "function", [K_ARGUMENTS] = "arguments",
    [K_OUTPUT] = "output",     [K_SUMMARY] = "summary",
};

/* Paths (from the top-level key down) of content strings in JSON bodies. */
static const unsigned char chat_paths[][JS_DEPTH] = {
    {K_CHOICES, K_ARR, K_MESSAGE, K_CONTENT, K_END},
    {K_CHOICES, K_ARR, K_MESSAGE, K_REASONING_CONTENT, K_END},
    {K_CHOICES, K_ARR, K_MESSAGE, K_REFUSAL, K_END},
    {K_CHOICES, K_ARR, K_MESSAGE, K_TOOL_CALLS, K_ARR, K_FUNCTION, K_ARGUMENTS, K_END},
};
static const unsigned char compl_paths[][JS_DEPTH] = {
    {K_CHOICES, K_ARR, K_TEXT, K_END},
};
static const unsigned char resp_paths[][JS_DEPTH] = {
    {K_OUTPUT, K_ARR, K_CONTENT, K_ARR, K_TEXT, K_END},
    {K_OUTPUT, K_ARR, K_CONTENT, K_ARR, K_REFUSAL, K_END},
    {K_OUTPUT, K_ARR, K_ARGUMENTS, K_END},
    {K_OUTPUT, K_ARR, K_SUMMARY, K_ARR, K_TEXT, K_END},
};

/* Incremental scanner of a JSON body (no validation, bounded state). */
struct jscan {
    size_t depth;                     /* open containers (also past JS_DEPTH) */
    unsigned char kind[JS_DEPTH + 1]; /* '{' or '[' at levels 1..JS_DEPTH */
    unsigned char key[JS_DEPTH + 1];  /* enum key of the current member at each level */
    unsigned char st;                 /* enum jstate */
    bool want_key;                    /* in an object, before a member's key */
    bool esc;                         /* in a string, after a backslash */
    unsigned char uhex;               /* \u hex digits still to skip */
    bool str_key;                     /* the string is a tracked key */
    bool str_content;                 /* the string is a content string */
    uint64_t str_cp;                  /* characters of that content string so far */
    char kbuf[KEY_MAX];               /* the key so far */
    unsigned char klen;               /* its length */
    bool kbad;                        /* too long or escaped: not recognised */
    bool started;                     /* the top-level value has begun */
    bool seen_usage;                  /* a top-level "usage" key was read */
    bool cap_on;                      /* capturing the usage object */
    bool cap_bad;                     /* the capture overflowed or failed */
    size_t cap_from;                  /* capture start in the current piece */
    uint64_t chars;                   /* characters of content strings */
};

/* The caller's current piece, while feed() walks it. */
struct piece {
    const char *p;          /* the bytes */
    size_t n;               /* their count */
    size_t out;             /* start of the decided, not yet emitted, forward range */
    size_t ev;              /* start of the current event in p (end of the forward range) */
    tg_usage_emit_fn *emit; /* the caller's sink */
    void *arg;              /* its argument */
};

struct tg_usage {
    struct tg_usage_opts o;   /* options, copied */
    struct tg_usage_result r; /* what was read */
    bool transform;           /* SSE events are held and judged */
    bool cut_on;              /* max_output is enforced */
    bool finished;            /* tg_usage_finish() ran */
    int err;                  /* sticky emit error, or 0 */
    bool oracle;              /* tg_usage_set_oracle(): jansson reads every SSE event */
    /* SSE framing */
    unsigned char ls;       /* enum lstate */
    unsigned char bom;      /* BOM bytes matched at the stream start */
    unsigned char name_len; /* bytes of "data" matched in the field name, or NAME_BAD */
    bool after_cr;          /* the last piece ended with a CR line end */
    bool cr_event_end;      /* ... which ended an event */
    bool cr_dropped;        /* ... which was dropped */
    bool ev_has_data;       /* the current event has a data field */
    bool ev_over;           /* the current event is oversized (forwarded unread) */
    size_t ev_raw;          /* bytes of the current event in earlier pieces */
    uint64_t ev_data_cp;    /* oversized event: characters of its data */
    struct tg_buf data;     /* the current event's joined data */
    struct tg_buf held;     /* transform: the current event's bytes from earlier pieces */
    /* identity for synthesized events */
    char id[TG_USAGE_STR_MAX];              /* first event's "id" (UTF-8, not NUL-terminated) */
    size_t id_len;                          /* its length */
    char model[TG_USAGE_STR_MAX];           /* first event's "model" */
    size_t model_len;                       /* its length */
    int64_t created;                        /* first event's "created" */
    bool have_id, have_model, have_created; /* which were seen */
    /* JSON body */
    struct jscan js;   /* scanner */
    struct tg_buf cap; /* raw bytes of the top-level usage object */
};

/* ---- helpers ---- */

/* Code points of UTF-8 text: bytes that are not continuation bytes. */
static uint64_t count_cp(const char *s, size_t n)
{
    uint64_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t tokens_of(uint64_t chars)
{
    return chars / 4 + (chars % 4 != 0);
}

/* Hand n bytes to the client; an error is sticky. */
static int put(struct tg_usage *u, struct piece *pc, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    int rv = pc->emit(pc->arg, p, n);
    if (rv < 0) {
        u->err = rv;
        return rv;
    }
    return 0;
}

/* Read one usage object.  Non-negative integers only; completion may be absent. */
static void read_usage(struct tg_usage *u, json_t *usage, const char *pk, const char *ck)
{
    json_t *pv = json_object_get(usage, pk), *cv = json_object_get(usage, ck);

    if (!json_is_object(usage) || !json_is_integer(pv) || json_integer_value(pv) < 0 ||
        (cv != NULL && !json_is_null(cv) && (!json_is_integer(cv) || json_integer_value(cv) < 0))) {
        u->r.lost = true;
        return;
    }
    u->r.have_usage = true;
    u->r.prompt_tokens = (uint64_t)json_integer_value(pv);
    u->r.completion_tokens = json_is_integer(cv) ? (uint64_t)json_integer_value(cv) : 0;
}

static void read_usage_api(struct tg_usage *u, json_t *usage)
{
    if (u->o.api == TG_USAGE_RESPONSES)
        read_usage(u, usage, "input_tokens", "output_tokens");
    else
        read_usage(u, usage, "prompt_tokens", "completion_tokens");
}

/* ---- SSE events ---- */

/* Characters of a JSON string (0 for anything else). */
static uint64_t str_cp(json_t *v)
{
    return json_is_string(v) ? count_cp(json_string_value(v), json_string_length(v)) : 0;
}

/* Output characters of one chat/completions chunk. */
static uint64_t choices_chars(const struct tg_usage *u, json_t *choices)
{
    uint64_t k = 0;
    size_t i, j;
    json_t *c, *tc;

    json_array_foreach(choices, i, c)
    {
        if (u->o.api == TG_USAGE_COMPLETIONS) {
            k += str_cp(json_object_get(c, "text"));
            continue;
        }
        json_t *d = json_object_get(c, "delta");
        k += str_cp(json_object_get(d, "content"));
        k += str_cp(json_object_get(d, "reasoning_content"));
        k += str_cp(json_object_get(d, "refusal"));
        json_array_foreach(json_object_get(d, "tool_calls"), j, tc) k +=
            str_cp(json_object_get(json_object_get(tc, "function"), "arguments"));
    }
    return k;
}

/* Output characters of one responses event; terminal events give usage and done. */
static uint64_t responses_event(struct tg_usage *u, json_t *root)
{
    static const char *const deltas[] = {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    };
    const char *type = json_string_value(json_object_get(root, "type"));

    if (type == NULL)
        return 0;
    if (strcmp(type, "response.completed") == 0 || strcmp(type, "response.incomplete") == 0 ||
        strcmp(type, "response.failed") == 0) {
        json_t *usage = json_object_get(json_object_get(root, "response"), "usage");
        if (usage != NULL && !json_is_null(usage))
            read_usage_api(u, usage);
        u->r.done = true;
        return 0;
    }
    for (size_t i = 0; i < sizeof(deltas) / sizeof(deltas[0]); i++)
        if (strcmp(type, deltas[i]) == 0)
            return str_cp(json_object_get(root, "delta"));
    return 0;
}

/* Keep a bounded string field of the first event that has it. */
static void keep_str(json_t *root, const char *name, char *dst, size_t *len, bool *have)
{
    json_t *v = json_object_get(root, name);
    if (*have || !json_is_string(v) || json_string_length(v) >= TG_USAGE_STR_MAX)
        return;
    *len = json_string_length(v);
    memcpy(dst, json_string_value(v), *len);
    *have = true;
}

static void keep_identity(struct tg_usage *u, json_t *root)
{
    keep_str(root, "id", u->id, &u->id_len, &u->have_id);
    keep_str(root, "model", u->model, &u->model_len, &u->have_model);
    json_t *c = json_object_get(root, "created");
    if (!u->have_created && json_is_integer(c)) {
        u->created = json_integer_value(c);
        u->have_created = true;
    }
}

/* Would one more content event of tok tokens pass max_output? */
static bool over_limit(const struct tg_usage *u, uint64_t events, uint64_t observed)
{
    uint64_t m = u->o.max_output;
    return events > m || observed > (m > UINT64_MAX / 4 ? UINT64_MAX : 4 * m);
}

/* A content event of chars characters: count it, or cut before it. */
static enum verdict content(struct tg_usage *u, uint64_t chars)
{
    uint64_t tok = chars > 4 ? tokens_of(chars) : 1;
    uint64_t events = sat_add(u->r.content_events, 1),
             observed = sat_add(u->r.observed_output, tok);

    if (u->cut_on && over_limit(u, events, observed))
        return V_CUT;
    u->r.content_events = events;
    u->r.observed_output = observed;
    return V_FORWARD;
}

/* The verdict of a read event: content is counted (or cut), a usage-only event may go. */
static enum verdict judge(struct tg_usage *u, uint64_t chars, bool usage_only)
{
    if (chars > 0)
        return content(u, chars);
    return usage_only && u->o.strip_usage ? V_DROP : V_FORWARD;
}

/*
 * Read an event's data with jansson: the reference reader.  It runs for the
 * events the scanner hands back (SC_HARD) and, with tg_usage_set_oracle(),
 * for every event, so that tests can compare the two.
 */
static enum verdict event_json(struct tg_usage *u, const char *d, size_t n)
{
    json_error_t jerr;
    json_t *root, *choices = NULL, *usage;
    uint64_t chars = 0;
    bool usage_only = false;

    root = json_loadb(d, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) { /* bad JSON, or NOMEM */
        u->r.lost = true;
        json_decref(root);
        return V_FORWARD;
    }
    switch (u->o.api) {
    case TG_USAGE_CHAT:
    case TG_USAGE_COMPLETIONS:
    case TG_USAGE_EMBEDDINGS:
        keep_identity(u, root);
        choices = json_object_get(root, "choices");
        usage = json_object_get(root, "usage");
        if (usage != NULL && !json_is_null(usage)) {
            read_usage_api(u, usage);
            usage_only = json_is_array(choices) && json_array_size(choices) == 0;
        }
        if (u->o.api != TG_USAGE_EMBEDDINGS)
            chars = choices_chars(u, choices);
        break;
    case TG_USAGE_RESPONSES: chars = responses_event(u, root); break;
    }
    json_decref(root);
    return judge(u, chars, usage_only);
}

/* ---- SSE events: the scanner ---- */

/*
 * An event's data is complete and contiguous when it is read (the joined
 * data buffer), so it is checked by a recursive descent over the buffer
 * rather than by the resumable body scanner, which does not validate: one
 * pass that accepts what json_loadb(JSON_REJECT_DUPLICATES) accepts and
 * notes, by the role of each container, only what event_json() would read.
 * A key is matched only in the container whose role expects it, so a
 * "usage" inside choices, or "content" inside an arguments string, is just
 * another key or text.  What the scanner cannot decide cheaply it answers
 * SC_HARD, and jansson reads that event (escaped keys, which the duplicate
 * check would have to decode; nesting past SC_DEPTH; more than SC_KEYS keys
 * open; reals that might overflow a double).
 */

#define SC_DEPTH 32    /* containers followed (jansson's limit is 2048) */
#define SC_KEYS 64     /* keys of the open objects, held for the duplicate check */
#define SC_TYPE_MAX 64 /* decoded responses `type` compared (all known ones are shorter) */

enum sc_status {
    SC_OK,   /* valid JSON object; the findings are complete */
    SC_BAD,  /* invalid JSON (jansson rejects it too) */
    SC_HARD, /* undecided: ask jansson */
};

/* What a container is, by the path that leads to it. */
enum role {
    R_OTHER,
    R_ROOT,       /* the event's object */
    R_CHOICES,    /* root.choices, an array */
    R_CHOICE,     /* an object in it */
    R_DELTA,      /* chat: choice.delta */
    R_TOOL_CALLS, /* chat: delta.tool_calls, an array */
    R_TOOL_CALL,  /* an object in it */
    R_FUNCTION,   /* tool_call.function */
    R_RESPONSE,   /* responses: root.response */
    R_USAGE,      /* root.usage (responses: response.usage), an object */
};

/* What a value is, by its key (or array) and the role of its container. */
enum slot {
    S_NONE,
    S_ID,         /* root.id */
    S_MODEL,      /* root.model */
    S_CREATED,    /* root.created */
    S_CHOICES,    /* root.choices */
    S_CHOICE,     /* an element of choices */
    S_USAGE,      /* the usage of this API */
    S_TYPE,       /* responses: root.type */
    S_RDELTA,     /* responses: root.delta */
    S_RESPONSE,   /* responses: root.response */
    S_DELTA,      /* chat: choice.delta */
    S_TOOL_CALLS, /* chat: delta.tool_calls */
    S_TOOL_CALL,  /* an element of tool_calls */
    S_FUNCTION,   /* tool_call.function */
    S_CONTENT,    /* a content string (counted) */
    S_PROMPT,     /* usage.prompt_tokens (responses: input_tokens) */
    S_COMPLETION, /* usage.completion_tokens (responses: output_tokens) */
};

/* What a usage field held. */
enum ukind { U_ABSENT, U_NULL, U_INT, U_OTHER };

/* A string value found in the data. */
struct sc_str {
    size_t at;  /* its first byte after the quote */
    size_t len; /* raw bytes up to the closing quote */
    bool esc;   /* holds escapes: decode before use */
    bool set;   /* found, and a string */
};

/* What event_json() would read, found by the scanner. */
struct sc_found {
    struct sc_str id, model, type; /* root strings */
    bool created_set;              /* root.created is an integer */
    int64_t created;               /* its value */
    bool choices_arr;              /* root.choices is an array */
    bool choices_any;              /* ... with an element */
    uint64_t chars;                /* characters of the content strings in choices */
    bool rdelta_set;               /* responses: root.delta is a string */
    uint64_t rdelta_cp;            /* its characters */
    bool usage_set;                /* usage present and not null */
    bool usage_obj;                /* ... an object */
    unsigned char pk, ck;          /* enum ukind of its two fields */
    int64_t pv, cv;                /* their values when U_INT */
};

struct scan {
    const char *p;         /* the event's data */
    size_t n;              /* its length */
    size_t i;              /* read position */
    enum tg_usage_api api; /* decides which keys matter */
    unsigned depth;        /* open containers */
    enum sc_status st;     /* SC_OK, or why the scan stopped */
    size_t nkeys;          /* keys held in keys[] */
    struct {
        size_t at, len; /* raw key bytes in p */
    } keys[SC_KEYS];    /* keys of the open objects, outermost first */
    struct sc_found f;  /* findings */
};

/* Bytes that stand for themselves in a string: printable ASCII but '"' and '\\'. */
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
static const unsigned char str_plain[256] = {
    R16(0), R16(0), 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x22 '"' */
    R16(1), R16(1), 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x5C '\\' */
    R16(1), R16(1),
};
#undef R16

/* Stop the scan with status st (the first one stays); false. */
static bool sc_stop(struct scan *s, enum sc_status st)
{
    if (s->st == SC_OK)
        s->st = st;
    return false;
}

static void sc_ws(struct scan *s)
{
    while (s->i < s->n &&
           (s->p[s->i] == ' ' || s->p[s->i] == '\n' || s->p[s->i] == '\r' || s->p[s->i] == '\t'))
        s->i++;
}

/* The value of 4 hex digits, or -1. */
static int hex4(const char *p)
{
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v += c - '0';
        else if (c >= 'a' && c <= 'f')
            v += c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v += c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

/*
 * Bytes of the escape at p[i] (its backslash), or 0 if jansson rejects it:
 * an unknown escape, bad hex, \u0000 (no JSON_ALLOW_NUL), a lone surrogate.
 * A surrogate pair is one escape of 12 bytes.
 */
static size_t esc_len(const char *p, size_t n, size_t i)
{
    int v, w;

    if (n - i < 2)
        return 0;
    switch (p[i + 1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't': return 2;
    case 'u': break;
    default: return 0;
    }
    if (n - i < 6 || (v = hex4(p + i + 2)) <= 0 || (v >= 0xDC00 && v <= 0xDFFF))
        return 0;
    if (v < 0xD800 || v > 0xDBFF)
        return 6;
    if (n - i < 12 || p[i + 6] != '\\' || p[i + 7] != 'u')
        return 0;
    w = hex4(p + i + 8);
    return w >= 0xDC00 && w <= 0xDFFF ? 12 : 0;
}

/* Bytes of the well-formed UTF-8 sequence (RFC 3629) at p, lead byte >= 0x80; 0 if none. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    size_t k;

    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
        hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing past U+10FFFF */
    } else {
        return 0;
    }
    if (n < k || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t j = 2; j < k; j++)
        if ((p[j] & 0xC0) != 0x80)
            return 0;
    return k;
}

/* The string whose quote is at s->i: checked, located, and its characters counted. */
static bool sc_string(struct scan *s, struct sc_str *out, uint64_t *chars)
{
    const unsigned char *p = (const unsigned char *)s->p;
    size_t n = s->n, i = s->i + 1, j, k;
    uint64_t cp = 0;
    bool esc = false;

    out->at = i;
    for (;;) {
        for (j = i; j < n && str_plain[p[j]]; j++)
            ;
        cp += j - i;
        i = j;
        if (i == n || p[i] < 0x20) /* unterminated, or a control character */
            return sc_stop(s, SC_BAD);
        if (p[i] == '"')
            break;
        if (p[i] == '\\') {
            k = esc_len(s->p, n, i);
            esc = true;
        } else {
            k = utf8_len(p + i, n - i);
        }
        if (k == 0)
            return sc_stop(s, SC_BAD);
        i += k;
        cp++;
    }
    out->len = i - out->at;
    out->esc = esc;
    out->set = true;
    *chars = cp;
    s->i = i + 1;
    return true;
}

/*
 * Decode the checked string body s[0..n) into dst; its length, or SIZE_MAX
 * when it does not fit in cap bytes.
 */
static size_t unescape(const char *s, size_t n, char *dst, size_t cap)
{
    size_t i = 0, o = 0;

    while (i < n) {
        char c = s[i], e[4];
        size_t k = 1;
        unsigned long v;

        if (c != '\\') {
            e[0] = c;
            i++;
        } else if (s[i + 1] != 'u') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            e[0] = to[strchr(from, s[i + 1]) - from];
            i += 2;
        } else {
            v = (unsigned long)hex4(s + i + 2);
            i += 6;
            if (v >= 0xD800 && v <= 0xDBFF) { /* esc_len() saw the low half */
                v = 0x10000 + ((v - 0xD800) << 10) + ((unsigned long)hex4(s + i + 2) - 0xDC00);
                i += 6;
            }
            if (v < 0x80) {
                e[0] = (char)v;
            } else if (v < 0x800) {
                e[0] = (char)(0xC0 | v >> 6);
                e[1] = (char)(0x80 | (v & 0x3F));
                k = 2;
            } else if (v < 0x10000) {
                e[0] = (char)(0xE0 | v >> 12);
                e[1] = (char)(0x80 | (v >> 6 & 0x3F));
                e[2] = (char)(0x80 | (v & 0x3F));
                k = 3;
            } else {
                e[0] = (char)(0xF0 | v >> 18);
                e[1] = (char)(0x80 | (v >> 12 & 0x3F));
                e[2] = (char)(0x80 | (v >> 6 & 0x3F));
                e[3] = (char)(0x80 | (v & 0x3F));
                k = 4;
            }
        }
        if (k > cap - o)
            return SIZE_MAX;
        memcpy(dst + o, e, k);
        o += k;
    }
    return o;
}

/*
 * The number at s->i, by jansson's rules: an integer (no fraction or
 * exponent) must fit int64_t; a real that might overflow a double (its
 * magnitude could reach 10^308) is left to jansson.
 */
static bool sc_number(struct scan *s, bool *is_int, int64_t *iv)
{
    const char *p = s->p;
    size_t n = s->n, i = s->i;
    bool neg = false, big = false, real = false, eneg = false;
    uint64_t mag = 0;
    long digits = 0, e = 0;

    if (p[i] == '-') {
        neg = true;
        i++;
    }
    if (i < n && p[i] == '0') {
        i++;
    } else if (i < n && p[i] >= '1' && p[i] <= '9') {
        for (; i < n && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
            unsigned d = (unsigned)(p[i] - '0');
            if (mag > (UINT64_MAX - d) / 10)
                big = true;
            else
                mag = mag * 10 + d;
        }
    } else {
        return sc_stop(s, SC_BAD);
    }
    if (i < n && p[i] == '.') {
        real = true;
        if (++i == n || p[i] < '0' || p[i] > '9')
            return sc_stop(s, SC_BAD);
        while (i < n && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        real = true;
        if (++i < n && (p[i] == '+' || p[i] == '-'))
            eneg = p[i++] == '-';
        if (i == n || p[i] < '0' || p[i] > '9')
            return sc_stop(s, SC_BAD);
        for (; i < n && p[i] >= '0' && p[i] <= '9'; i++)
            if (e < 100000) /* saturates: only the comparison below reads it */
                e = e * 10 + (p[i] - '0');
    }
    s->i = i;
    *is_int = !real;
    if (real)
        return digits + (eneg ? -e : e) <= 308 || sc_stop(s, SC_HARD);
    if (big || mag > (uint64_t)INT64_MAX + neg) /* strtoll's ERANGE */
        return sc_stop(s, SC_BAD);
    *iv = !neg ? (int64_t)mag : mag > (uint64_t)INT64_MAX ? INT64_MIN : -(int64_t)mag;
    return true;
}

/* The literal lit (true, false, null) at s->i. */
static bool sc_lit(struct scan *s, const char *lit, size_t len)
{
    if (s->n - s->i < len || memcmp(s->p + s->i, lit, len) != 0)
        return sc_stop(s, SC_BAD);
    s->i += len;
    return true;
}

#define KEY_IS(k, n, lit) ((n) == sizeof(lit) - 1 && memcmp(k, lit, sizeof(lit) - 1) == 0)

/* The slot of a member named k (raw, unescaped) in an object of this role. */
static enum slot key_slot(const struct scan *s, enum role role, const char *k, size_t n)
{
    bool resp = s->api == TG_USAGE_RESPONSES;

    switch (role) {
    case R_ROOT:
        if (resp)
            return KEY_IS(k, n, "type")       ? S_TYPE
                   : KEY_IS(k, n, "delta")    ? S_RDELTA
                   : KEY_IS(k, n, "response") ? S_RESPONSE
                                              : S_NONE;
        return KEY_IS(k, n, "id")        ? S_ID
               : KEY_IS(k, n, "model")   ? S_MODEL
               : KEY_IS(k, n, "created") ? S_CREATED
               : KEY_IS(k, n, "choices") ? S_CHOICES
               : KEY_IS(k, n, "usage")   ? S_USAGE
                                         : S_NONE;
    case R_CHOICE:
        if (s->api == TG_USAGE_COMPLETIONS)
            return KEY_IS(k, n, "text") ? S_CONTENT : S_NONE;
        return s->api == TG_USAGE_CHAT && KEY_IS(k, n, "delta") ? S_DELTA : S_NONE;
    case R_DELTA:
        if (KEY_IS(k, n, "content") || KEY_IS(k, n, "reasoning_content") || KEY_IS(k, n, "refusal"))
            return S_CONTENT;
        return KEY_IS(k, n, "tool_calls") ? S_TOOL_CALLS : S_NONE;
    case R_TOOL_CALL: return KEY_IS(k, n, "function") ? S_FUNCTION : S_NONE;
    case R_FUNCTION: return KEY_IS(k, n, "arguments") ? S_CONTENT : S_NONE;
    case R_RESPONSE: return KEY_IS(k, n, "usage") ? S_USAGE : S_NONE;
    case R_USAGE:
        if (resp)
            return KEY_IS(k, n, "input_tokens")    ? S_PROMPT
                   : KEY_IS(k, n, "output_tokens") ? S_COMPLETION
                                                   : S_NONE;
        return KEY_IS(k, n, "prompt_tokens")       ? S_PROMPT
               : KEY_IS(k, n, "completion_tokens") ? S_COMPLETION
                                                   : S_NONE;
    case R_OTHER:
    case R_CHOICES:
    case R_TOOL_CALLS: break;
    }
    return S_NONE;
}

static bool sc_value(struct scan *s, enum slot slot);

/* After a member or an element: true at the closer (consumed), false at a comma (consumed). */
static bool sc_next(struct scan *s, char closer, bool *end)
{
    sc_ws(s);
    if (s->i < s->n && s->p[s->i] == ',') {
        s->i++;
        sc_ws(s);
        *end = false;
        return true;
    }
    if (s->i < s->n && s->p[s->i] == closer) {
        s->i++;
        *end = true;
        return true;
    }
    return sc_stop(s, SC_BAD);
}

/* The object at s->i: members checked (no duplicate keys), values read by slot. */
static bool sc_object(struct scan *s, enum role role)
{
    size_t base = s->nkeys;
    bool end = false;

    if (++s->depth > SC_DEPTH)
        return sc_stop(s, SC_HARD);
    s->i++;
    sc_ws(s);
    if (s->i < s->n && s->p[s->i] == '}') {
        s->i++;
        end = true;
    }
    while (!end) {
        struct sc_str k;
        uint64_t cp;

        if (s->i == s->n || s->p[s->i] != '"')
            return sc_stop(s, SC_BAD);
        if (!sc_string(s, &k, &cp))
            return false;
        if (k.esc) /* "a" and "\u0061" are the same key: jansson compares them */
            return sc_stop(s, SC_HARD);
        for (size_t j = base; j < s->nkeys; j++)
            if (s->keys[j].len == k.len && memcmp(s->p + s->keys[j].at, s->p + k.at, k.len) == 0)
                return sc_stop(s, SC_BAD); /* JSON_REJECT_DUPLICATES */
        if (s->nkeys == SC_KEYS)
            return sc_stop(s, SC_HARD);
        s->keys[s->nkeys].at = k.at;
        s->keys[s->nkeys].len = k.len;
        s->nkeys++;
        sc_ws(s);
        if (s->i == s->n || s->p[s->i] != ':')
            return sc_stop(s, SC_BAD);
        s->i++;
        sc_ws(s);
        if (!sc_value(s, key_slot(s, role, s->p + k.at, k.len)) || !sc_next(s, '}', &end))
            return false;
    }
    s->nkeys = base;
    s->depth--;
    return true;
}

/* The array at s->i; the elements of choices and tool_calls have their slots. */
static bool sc_array(struct scan *s, enum role role)
{
    enum slot es = role == R_CHOICES ? S_CHOICE : role == R_TOOL_CALLS ? S_TOOL_CALL : S_NONE;
    bool end = false;

    if (++s->depth > SC_DEPTH)
        return sc_stop(s, SC_HARD);
    s->i++;
    sc_ws(s);
    if (s->i < s->n && s->p[s->i] == ']') {
        s->i++;
        end = true;
    }
    if (!end && role == R_CHOICES)
        s->f.choices_any = true;
    while (!end)
        if (!sc_value(s, es) || !sc_next(s, ']', &end))
            return false;
    s->depth--;
    return true;
}

/* Record a usage field of kind k (value v when U_INT). */
static void sc_usage_field(struct scan *s, enum slot slot, enum ukind k, int64_t v)
{
    if (slot == S_PROMPT) {
        s->f.pk = (unsigned char)k;
        s->f.pv = v;
    } else if (slot == S_COMPLETION) {
        s->f.ck = (unsigned char)k;
        s->f.cv = v;
    }
}

/* The value at s->i, in slot. */
static bool sc_value(struct scan *s, enum slot slot)
{
    struct sc_str str;
    uint64_t cp;
    int64_t iv = 0;
    bool is_int;

    if (s->i == s->n)
        return sc_stop(s, SC_BAD);
    if (slot == S_USAGE && s->p[s->i] != 'n')
        s->f.usage_set = true; /* not null (or invalid, which ends the scan) */
    switch (s->p[s->i]) {
    case '{':
        sc_usage_field(s, slot, U_OTHER, 0);
        if (slot == S_USAGE)
            s->f.usage_obj = true;
        return sc_object(s, slot == S_CHOICE      ? R_CHOICE
                            : slot == S_DELTA     ? R_DELTA
                            : slot == S_TOOL_CALL ? R_TOOL_CALL
                            : slot == S_FUNCTION  ? R_FUNCTION
                            : slot == S_RESPONSE  ? R_RESPONSE
                            : slot == S_USAGE     ? R_USAGE
                                                  : R_OTHER);
    case '[':
        sc_usage_field(s, slot, U_OTHER, 0);
        if (slot == S_CHOICES)
            s->f.choices_arr = true;
        return sc_array(s, slot == S_CHOICES      ? R_CHOICES
                           : slot == S_TOOL_CALLS ? R_TOOL_CALLS
                                                  : R_OTHER);
    case '"':
        if (!sc_string(s, &str, &cp))
            return false;
        if (slot == S_CONTENT) {
            s->f.chars += cp;
        } else if (slot == S_ID) {
            s->f.id = str;
        } else if (slot == S_MODEL) {
            s->f.model = str;
        } else if (slot == S_TYPE) {
            s->f.type = str;
        } else if (slot == S_RDELTA) {
            s->f.rdelta_set = true;
            s->f.rdelta_cp = cp;
        } else {
            sc_usage_field(s, slot, U_OTHER, 0);
        }
        return true;
    case 't': sc_usage_field(s, slot, U_OTHER, 0); return sc_lit(s, "true", 4);
    case 'f': sc_usage_field(s, slot, U_OTHER, 0); return sc_lit(s, "false", 5);
    case 'n': sc_usage_field(s, slot, U_NULL, 0); return sc_lit(s, "null", 4);
    default:
        if (s->p[s->i] != '-' && (s->p[s->i] < '0' || s->p[s->i] > '9'))
            return sc_stop(s, SC_BAD);
        if (!sc_number(s, &is_int, &iv))
            return false;
        sc_usage_field(s, slot, is_int ? U_INT : U_OTHER, iv);
        if (slot == S_CREATED && is_int) {
            s->f.created_set = true;
            s->f.created = iv;
        }
        return true;
    }
}

/* Scan one event's data (n > 0).  SC_OK: s->f holds what event_json() would read. */
static enum sc_status scan_event(struct scan *s, enum tg_usage_api api, const char *d, size_t n)
{
    s->p = d;
    s->n = n;
    s->i = 0;
    s->api = api;
    s->depth = 0;
    s->st = SC_OK;
    s->nkeys = 0;
    memset(&s->f, 0, sizeof(s->f));
    sc_ws(s);
    if (s->i == n || d[s->i] != '{') /* not an object: jansson's array is no use either */
        return SC_BAD;
    if (!sc_object(s, R_ROOT))
        return s->st;
    sc_ws(s);
    return s->i == n ? SC_OK : SC_BAD; /* trailing bytes */
}

/* read_usage() on scanned fields. */
static void usage_scanned(struct tg_usage *u, const struct sc_found *f)
{
    if (!f->usage_obj || f->pk != U_INT || f->pv < 0 || f->ck == U_OTHER ||
        (f->ck == U_INT && f->cv < 0)) {
        u->r.lost = true;
        return;
    }
    u->r.have_usage = true;
    u->r.prompt_tokens = (uint64_t)f->pv;
    u->r.completion_tokens = f->ck == U_INT ? (uint64_t)f->cv : 0;
}

/* keep_str() on a scanned string: decoded, shorter than TG_USAGE_STR_MAX. */
static void keep_scanned(const struct scan *s, const struct sc_str *v, char *dst, size_t *len,
                         bool *have)
{
    size_t k;

    if (*have || !v->set)
        return;
    if (!v->esc) {
        if (v->len >= TG_USAGE_STR_MAX)
            return;
        memcpy(dst, s->p + v->at, v->len);
        k = v->len;
    } else if ((k = unescape(s->p + v->at, v->len, dst, TG_USAGE_STR_MAX - 1)) == SIZE_MAX) {
        return;
    }
    *len = k;
    *have = true;
}

/* Is the scanned string v the literal lit? */
static bool str_is(const struct scan *s, const struct sc_str *v, const char *lit)
{
    char b[SC_TYPE_MAX];
    const char *t = s->p + v->at;
    size_t n = v->len;

    if (v->esc) {
        n = unescape(t, n, b, sizeof(b));
        t = b;
    }
    return n == strlen(lit) && memcmp(t, lit, n) == 0;
}

/* event_json() on a scanned event: the same reads, the same verdict. */
static enum verdict event_scanned(struct tg_usage *u, const struct scan *s)
{
    static const char *const deltas[] = {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    };
    const struct sc_found *f = &s->f;
    uint64_t chars = 0;
    bool usage_only = false;

    if (u->o.api != TG_USAGE_RESPONSES) {
        keep_scanned(s, &f->id, u->id, &u->id_len, &u->have_id);
        keep_scanned(s, &f->model, u->model, &u->model_len, &u->have_model);
        if (!u->have_created && f->created_set) {
            u->created = f->created;
            u->have_created = true;
        }
        if (f->usage_set) {
            usage_scanned(u, f);
            usage_only = f->choices_arr && !f->choices_any;
        }
        if (u->o.api != TG_USAGE_EMBEDDINGS)
            chars = f->chars;
    } else if (f->type.set) {
        if (str_is(s, &f->type, "response.completed") ||
            str_is(s, &f->type, "response.incomplete") || str_is(s, &f->type, "response.failed")) {
            if (f->usage_set)
                usage_scanned(u, f);
            u->r.done = true;
        } else if (f->rdelta_set) {
            for (size_t i = 0; i < sizeof(deltas) / sizeof(deltas[0]); i++)
                if (str_is(s, &f->type, deltas[i]))
                    chars = f->rdelta_cp;
        }
    }
    return judge(u, chars, usage_only);
}

/* An ended event with readable data: usage, content, and the verdict. */
static enum verdict on_event(struct tg_usage *u)
{
    const char *d = u->data.base;
    size_t n = u->data.len;
    struct scan s;

    if (n == 0) /* an empty data buffer dispatches nothing (WHATWG) */
        return V_FORWARD;
    if (n == 6 && memcmp(d, "[DONE]", 6) == 0) {
        u->r.done = true;
        return V_FORWARD;
    }
    if (u->oracle)
        return event_json(u, d, n);
    switch (scan_event(&s, u->o.api, d, n)) {
    case SC_OK: return event_scanned(u, &s);
    case SC_BAD: u->r.lost = true; return V_FORWARD;
    case SC_HARD: return event_json(u, d, n);
    }
    return V_FORWARD;
}

/*
 * An oversized event was forwarded unread.  On chat/completions it counts
 * as content with all of its data's characters (an upstream that ignores
 * max_tokens must not slip past the cut with huge events); the cut then
 * comes right after it.
 */
static enum verdict on_over_event(struct tg_usage *u)
{
    if (!u->ev_has_data || (u->o.api != TG_USAGE_CHAT && u->o.api != TG_USAGE_COMPLETIONS))
        return V_FORWARD;
    uint64_t tok = u->ev_data_cp > 4 ? tokens_of(u->ev_data_cp) : 1;
    u->r.content_events = sat_add(u->r.content_events, 1);
    u->r.observed_output = sat_add(u->r.observed_output, tok);
    return u->cut_on && over_limit(u, u->r.content_events, u->r.observed_output) ? V_CUT_AFTER
                                                                                 : V_FORWARD;
}

/* The event stops being read: it will be forwarded as it comes. */
static void go_over(struct tg_usage *u)
{
    if (u->ev_over)
        return;
    u->ev_over = true;
    u->r.lost = true;
    u->ev_data_cp = count_cp(u->data.base, u->data.len);
    u->data.len = 0;
}

/* Append data value bytes to the current event. */
static void data_add(struct tg_usage *u, const char *s, size_t n)
{
    if (u->ev_over) {
        u->ev_data_cp += count_cp(s, n);
        return;
    }
    if (tg_buf_append(&u->data, s, n) != 0) { /* TG_E_TOO_LARGE or TG_E_NOMEM */
        go_over(u);
        u->ev_data_cp += count_cp(s, n);
    }
}

/* A data field starts: lines join with LF. */
static void data_line(struct tg_usage *u)
{
    if (u->ev_has_data)
        data_add(u, "\n", 1);
    u->ev_has_data = true;
}

/* ---- the cut ---- */

/* A bounded output string for the synthesized tail. */
struct out {
    char *p;    /* storage */
    size_t len; /* used */
    size_t cap; /* size */
    bool err;   /* overflow (cannot happen with TAIL_MAX; checked anyway) */
};

static void out_add(struct out *o, const char *s, size_t n)
{
    if (o->err || n > o->cap - o->len) {
        o->err = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void out_lit(struct out *o, const char *s)
{
    out_add(o, s, strlen(s));
}

static void out_u64(struct out *o, uint64_t v)
{
    char b[24];
    size_t i = sizeof(b);
    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    out_add(o, b + i, sizeof(b) - i);
}

static void out_i64(struct out *o, int64_t v)
{
    if (v < 0) {
        out_lit(o, "-");
        out_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        out_u64(o, (uint64_t)v);
    }
}

/* A JSON string literal of valid UTF-8 (jansson-decoded). */
static void out_json_str(struct out *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;

    out_lit(o, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        out_add(o, s + run, i - run);
        run = i + 1;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            out_add(o, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            out_add(o, e, 6);
        }
    }
    out_add(o, s + run, n - run);
    out_lit(o, "\"");
}

/* `data: {"id":..,"object":..,"created":..,"model":..,"choices":` */
static void out_head(struct tg_usage *u, struct out *o)
{
    out_lit(o, "data: {\"id\":");
    out_json_str(o, u->id, u->id_len);
    out_lit(o, u->o.api == TG_USAGE_CHAT ? ",\"object\":\"chat.completion.chunk\",\"created\":"
                                         : ",\"object\":\"text_completion\",\"created\":");
    out_i64(o, u->have_created ? u->created : (int64_t)time(NULL));
    out_lit(o, ",\"model\":");
    out_json_str(o, u->model, u->model_len);
    out_lit(o, ",\"choices\":");
}

/* Emit the final event, the usage event (unless stripped) and [DONE]; the stream is over. */
static int cut(struct tg_usage *u, struct piece *pc)
{
    char buf[TAIL_MAX];
    struct out o = {buf, 0, sizeof(buf), false};
    uint64_t p = u->o.prompt_estimate, c = u->r.observed_output;

    u->r.cut = true;
    out_head(u, &o);
    out_lit(&o,
            u->o.api == TG_USAGE_CHAT
                ? "[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n"
                : "[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}]}"
                  "\n\n");
    if (!u->o.strip_usage) {
        out_head(u, &o);
        out_lit(&o, "[],\"usage\":{\"prompt_tokens\":");
        out_u64(&o, p);
        out_lit(&o, ",\"completion_tokens\":");
        out_u64(&o, c);
        out_lit(&o, ",\"total_tokens\":");
        out_u64(&o, sat_add(p, c));
        out_lit(&o, "}}\n\n");
    }
    out_lit(&o, "data: [DONE]\n\n");
    if (o.err) { /* cannot happen: id and model are bounded */
        o.len = 0;
        out_lit(&o, "data: [DONE]\n\n");
    }
    int rv = put(u, pc, o.p, o.len);
    return rv < 0 ? rv : TG_USAGE_CUT;
}

/* ---- SSE framing ---- */

/*
 * The event ended at e (after its blank line).  Judge it and move the
 * forward marks.  0, TG_USAGE_CUT or an emit error.
 */
static int event_end(struct tg_usage *u, struct piece *pc, size_t e)
{
    enum verdict v;
    int rv;

    if (!u->ev_over && u->ev_raw + (e - pc->ev) > TG_USAGE_RAW_MAX)
        go_over(u);
    v = u->ev_over ? on_over_event(u) : u->ev_has_data ? on_event(u) : V_FORWARD;
    u->data.len = 0;
    u->ev_has_data = u->ev_over = false;
    u->ev_raw = 0;
    u->ev_data_cp = 0;
    if (!u->transform) {
        pc->ev = e;
        return 0;
    }
    switch (v) {
    case V_FORWARD:
        /* held bytes mean the event began in an earlier piece: out == ev == 0 */
        rv = put(u, pc, u->held.base, u->held.len);
        u->held.len = 0;
        pc->ev = e;
        return rv;
    case V_DROP:
        rv = put(u, pc, pc->p + pc->out, pc->ev - pc->out);
        u->held.len = 0;
        pc->out = pc->ev = e;
        return rv;
    case V_CUT:
        rv = put(u, pc, pc->p + pc->out, pc->ev - pc->out);
        u->held.len = 0;
        pc->out = pc->ev = pc->n;
        return rv < 0 ? rv : cut(u, pc);
    case V_CUT_AFTER:
        rv = put(u, pc, u->held.base, u->held.len); /* non-empty only when out == 0 */
        u->held.len = 0;
        if (rv == 0)
            rv = put(u, pc, pc->p + pc->out, e - pc->out);
        pc->out = pc->ev = pc->n;
        return rv < 0 ? rv : cut(u, pc);
    }
    return 0;
}

/* Index after the line end at i (a CR may take the LF that follows it). */
static size_t line_end(struct tg_usage *u, const char *p, size_t n, size_t i)
{
    if (p[i] == '\r') {
        if (i + 1 == n) {
            u->after_cr = true;
            u->cr_event_end = false;
        } else if (p[i + 1] == '\n') {
            return i + 2;
        }
    }
    return i + 1;
}

/* Index of the first CR or LF at or after i, or n (two memchr: CR is rare, lines are long). */
static size_t find_eol(const char *p, size_t n, size_t i)
{
    const char *lf = i < n ? memchr(p + i, '\n', n - i) : NULL;
    size_t end = lf ? (size_t)(lf - p) : n;
    const char *cr = end > i ? memchr(p + i, '\r', end - i) : NULL;
    return cr ? (size_t)(cr - p) : end;
}

/* Walk one piece.  eof: the body ended after it. */
static int sse_walk(struct tg_usage *u, struct piece *pc, bool eof)
{
    const char *p = pc->p;
    size_t n = pc->n, i = 0, j;
    int rv;

    if (n > 0 && u->after_cr) {
        u->after_cr = false;
        if (p[0] == '\n') {
            i = 1;
            if (u->cr_event_end) {
                pc->ev = 1;
                if (u->cr_dropped)
                    pc->out = 1;
            }
        }
    }
    while (i < n) {
        char c = p[i];
        switch ((enum lstate)u->ls) {
        case L_BOM:
            if ((unsigned char)c == (unsigned char)"\xEF\xBB\xBF"[u->bom]) {
                i++;
                if (++u->bom == 3)
                    u->ls = L_START;
                continue;
            }
            u->ls = L_START;
            if (u->bom > 0) { /* a partial BOM starts a field that is not "data" */
                u->ls = L_NAME;
                u->name_len = NAME_BAD;
            }
            continue;
        case L_START:
            if (c == '\n' || c == '\r') { /* blank line: the event ends */
                size_t e = i + 1;
                bool lone_cr = false;
                if (c == '\r') {
                    if (e < n && p[e] == '\n')
                        e++;
                    else if (e == n)
                        lone_cr = true;
                }
                rv = event_end(u, pc, e);
                if (rv != 0)
                    return rv;
                if (lone_cr) {
                    u->after_cr = true;
                    u->cr_event_end = true;
                    u->cr_dropped = pc->out == e; /* a forwarded event leaves out before e */
                }
                i = e;
                continue;
            }
            if (c == ':') {
                u->ls = L_SKIP;
                i++;
                continue;
            }
            u->ls = L_NAME;
            u->name_len = 0;
            continue;
        case L_NAME:
            if (c == ':') {
                if (u->name_len == 4) {
                    data_line(u);
                    u->ls = L_VALUE_SP;
                } else {
                    u->ls = L_SKIP;
                }
                i++;
            } else if (c == '\r' || c == '\n') { /* a field without a colon: empty value */
                if (u->name_len == 4)
                    data_line(u);
                u->ls = L_START;
                i = line_end(u, p, n, i);
            } else {
                u->name_len =
                    u->name_len < 4 && c == "data"[u->name_len] ? u->name_len + 1 : NAME_BAD;
                i++;
            }
            continue;
        case L_VALUE_SP:
            u->ls = L_VALUE;
            if (c == ' ')
                i++;
            continue;
        case L_VALUE:
        case L_SKIP:
            j = find_eol(p, n, i);
            if (u->ls == L_VALUE && j > i)
                data_add(u, p + i, j - i);
            if (j < n) {
                u->ls = L_START;
                i = line_end(u, p, n, j);
            } else {
                i = j;
            }
            continue;
        }
    }
    if (eof && (u->ev_raw > 0 || pc->ev < n || u->ev_has_data)) {
        /* the body ended inside an event: treat it as ended */
        rv = event_end(u, pc, n);
        u->ls = L_START;
        if (rv != 0)
            return rv;
    }
    /* The piece ends inside an event: forward the decided range, hold the rest. */
    u->ev_raw += n - pc->ev;
    if (!u->ev_over && u->ev_raw > TG_USAGE_RAW_MAX)
        go_over(u);
    if (!u->transform)
        return 0;
    if (!u->ev_over && tg_buf_append(&u->held, p + pc->ev, n - pc->ev) != 0)
        go_over(u); /* NOMEM: forward instead of holding */
    rv = put(u, pc, p + pc->out, pc->ev - pc->out);
    if (rv == 0 && u->ev_over) {
        rv = put(u, pc, u->held.base, u->held.len);
        u->held.len = 0;
        if (rv == 0)
            rv = put(u, pc, p + pc->ev, n - pc->ev);
    }
    return rv;
}

/* ---- JSON bodies ---- */

static unsigned char key_id(const struct jscan *js)
{
    if (js->kbad)
        return K_OTHER;
    for (unsigned k = K_USAGE; k < K_END; k++)
        if (strlen(key_names[k]) == js->klen && memcmp(key_names[k], js->kbuf, js->klen) == 0)
            return (unsigned char)k;
    return K_OTHER;
}

/* Is a string value at the current depth a content string of this API? */
static bool content_path(const struct tg_usage *u)
{
    const struct jscan *js = &u->js;
    const unsigned char(*paths)[JS_DEPTH];
    size_t np;

    switch (u->o.api) {
    case TG_USAGE_CHAT: paths = chat_paths, np = sizeof(chat_paths) / sizeof(chat_paths[0]); break;
    case TG_USAGE_COMPLETIONS:
        paths = compl_paths, np = sizeof(compl_paths) / sizeof(compl_paths[0]);
        break;
    case TG_USAGE_RESPONSES:
        paths = resp_paths, np = sizeof(resp_paths) / sizeof(resp_paths[0]);
        break;
    case TG_USAGE_EMBEDDINGS:
    default: return false;
    }
    if (js->depth == 0 || js->depth >= JS_DEPTH)
        return false;
    for (size_t k = 0; k < np; k++) {
        size_t d;
        for (d = 0; d < js->depth && paths[k][d] == js->key[d + 1]; d++)
            ;
        if (d == js->depth && paths[k][d] == K_END)
            return true;
    }
    return false;
}

/* The captured usage object is complete: parse it. */
static void cap_done(struct tg_usage *u)
{
    json_error_t jerr;
    json_t *usage;

    u->js.cap_on = false;
    if (u->js.cap_bad) {
        u->r.lost = true;
        return;
    }
    usage = json_loadb(u->cap.base, u->cap.len, JSON_REJECT_DUPLICATES, &jerr);
    if (usage == NULL)
        u->r.lost = true;
    else
        read_usage_api(u, usage);
    json_decref(usage);
    tg_buf_dispose(&u->cap);
}

static void cap_add(struct tg_usage *u, const char *p, size_t n)
{
    if (!u->js.cap_bad && tg_buf_append(&u->cap, p, n) != 0)
        u->js.cap_bad = true;
}

/* A value (string, scalar or container) begins with byte c at the current depth. */
static void value_start(struct tg_usage *u, size_t i, char c)
{
    struct jscan *js = &u->js;

    if (js->depth == 1 && js->kind[1] == '{' && js->key[1] == K_USAGE && c == '{') {
        js->cap_on = true;
        js->cap_bad = false;
        js->cap_from = i;
        u->cap.len = 0;
    }
}

static void json_walk(struct tg_usage *u, const char *p, size_t n)
{
    struct jscan *js = &u->js;
    size_t i = 0;

    js->cap_from = 0;
    while (i < n && !u->r.done) {
        char c = p[i];
        unsigned char uc = (unsigned char)c;

        if (js->st == J_STR) {
            if (js->uhex) {
                js->uhex--;
                i++;
                continue;
            }
            if (js->esc) {
                js->esc = false;
                if (c == 'u')
                    js->uhex = 4;
                js->kbad = true; /* escaped keys are not recognised */
                js->str_cp++;
                i++;
                continue;
            }
            if (c == '"') {
                js->st = J_VALUE;
                if (js->str_key) {
                    unsigned char k = key_id(js);
                    if (k == K_USAGE && js->depth == 1) {
                        if (js->seen_usage) { /* a second top-level usage: ambiguous */
                            u->r.lost = true;
                            k = K_OTHER;
                        }
                        js->seen_usage = true;
                    }
                    js->key[js->depth] = k;
                    js->want_key = false;
                } else if (js->str_content && js->str_cp > 0) {
                    js->chars = sat_add(js->chars, js->str_cp);
                    u->r.content_events++;
                    u->r.observed_output = tokens_of(js->chars);
                }
                i++;
                continue;
            }
            if (c == '\\') {
                js->esc = true;
                i++;
                continue;
            }
            if (js->str_key) {
                if (js->klen < KEY_MAX)
                    js->kbuf[js->klen++] = c;
                else
                    js->kbad = true;
                i++;
            } else if (js->str_content) {
                js->str_cp += (uc & 0xC0) != 0x80;
                i++;
            } else { /* skip the run to the next quote or backslash */
                while (i < n && p[i] != '"' && p[i] != '\\')
                    i++;
            }
            continue;
        }
        if (js->st == J_SCALAR) {
            while (i < n && p[i] != ',' && p[i] != '}' && p[i] != ']' && p[i] != ' ' &&
                   p[i] != '\n' && p[i] != '\r' && p[i] != '\t')
                i++;
            if (i < n)
                js->st = J_VALUE;
            continue;
        }
        switch (c) {
        case ' ':
        case '\t':
        case '\n':
        case '\r':
        case ':': break;
        case '{':
        case '[':
            value_start(u, i, c);
            js->depth++;
            js->started = true;
            if (js->depth <= JS_DEPTH) {
                js->kind[js->depth] = (unsigned char)c;
                js->key[js->depth] = c == '[' ? K_ARR : K_OTHER;
            }
            js->want_key = c == '{';
            break;
        case '}':
        case ']':
            if (js->depth == 0)
                break; /* stray closer: ignored */
            js->depth--;
            js->want_key = false;
            if (js->cap_on && js->depth == 1) {
                cap_add(u, p + js->cap_from, i + 1 - js->cap_from);
                cap_done(u);
            }
            if (js->depth == 0 && js->started)
                u->r.done = true;
            break;
        case ',':
            js->want_key = js->depth >= 1 && js->depth <= JS_DEPTH && js->kind[js->depth] == '{';
            break;
        case '"':
            js->st = J_STR;
            js->esc = false;
            js->uhex = 0;
            js->str_cp = 0;
            if (js->want_key && js->depth >= 1 && js->depth <= JS_DEPTH) {
                js->str_key = true;
                js->str_content = false;
                js->klen = 0;
                js->kbad = false;
            } else {
                value_start(u, i, c);
                js->str_key = false;
                js->str_content = content_path(u);
            }
            break;
        default:
            value_start(u, i, c);
            js->st = J_SCALAR;
            continue; /* the scalar loop takes this byte */
        }
        i++;
    }
    if (js->cap_on)
        cap_add(u, p + js->cap_from, n - js->cap_from);
}

/* ---- API ---- */

struct tg_usage *tg_usage_new(const struct tg_usage_opts *o)
{
    struct tg_usage *u = tg_mem_calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->o = *o;
    u->cut_on =
        o->sse && o->max_output > 0 && (o->api == TG_USAGE_CHAT || o->api == TG_USAGE_COMPLETIONS);
    u->transform = o->sse && (o->strip_usage || u->cut_on);
    u->ls = L_BOM;
    tg_buf_init(&u->data, TG_USAGE_EVENT_MAX);
    tg_buf_init(&u->held, TG_USAGE_RAW_MAX);
    tg_buf_init(&u->cap, TG_USAGE_JSON_MAX);
    return u;
}

void tg_usage_free(struct tg_usage *u)
{
    if (u == NULL)
        return;
    tg_buf_dispose(&u->data);
    tg_buf_dispose(&u->held);
    tg_buf_dispose(&u->cap);
    tg_mem_free(u);
}

/* Common entry of feed and finish. */
static int run(struct tg_usage *u, const char *p, size_t n, bool eof, tg_usage_emit_fn *emit,
               void *arg)
{
    struct piece pc = {p, n, 0, 0, emit, arg};
    int rv;

    if (u->err)
        return u->err;
    if (u->finished)
        return TG_E_CLOSED;
    if (u->r.cut)
        return TG_USAGE_CUT;
    if (eof)
        u->finished = true;
    if (!u->o.sse) {
        rv = put(u, &pc, p, n);
        if (rv != 0)
            return rv;
        json_walk(u, p, n);
        if (eof && u->js.cap_on) { /* the body ended inside the usage object */
            u->js.cap_on = false;
            u->r.lost = true;
        }
        return 0;
    }
    if (!u->transform) {
        rv = put(u, &pc, p, n);
        if (rv != 0)
            return rv;
    }
    return sse_walk(u, &pc, eof);
}

int tg_usage_feed(struct tg_usage *u, const char *p, size_t n, tg_usage_emit_fn *emit, void *arg)
{
    return run(u, p, n, false, emit, arg);
}

int tg_usage_finish(struct tg_usage *u, tg_usage_emit_fn *emit, void *arg)
{
    return run(u, "", 0, true, emit, arg);
}

void tg_usage_set_oracle(struct tg_usage *u, bool on)
{
    u->oracle = on;
}

const struct tg_usage_result *tg_usage_result(const struct tg_usage *u)
{
    return &u->r;
}
