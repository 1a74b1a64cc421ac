/*
 * usage.h - token usage from model responses, read incrementally.
 *
 * A struct tg_usage sits on one response body (SPEC §5, §6).  It reads the
 * bytes in whatever pieces the upstream sends, extracts the upstream's
 * `usage` and counts the output it sees pass ("observed" usage), and hands
 * the bytes on to the client through an emit callback.  It never buffers a
 * whole response: an SSE stream is held at most one event at a time, a JSON
 * body not at all.
 *
 * Two modes, fixed at tg_usage_new():
 *
 *  - pass-through (a JSON body, or SSE with neither strip_usage nor an
 *    enforced max_output): every feed() hands its input to emit() once,
 *    unchanged and uncopied, then parses it on the side;
 *  - transform (SSE with strip_usage, or max_output on chat/completions):
 *    the bytes of the current event are held until its blank line, then
 *    the event is forwarded byte-identical, dropped (strip_usage: an event
 *    whose JSON has a non-null `usage` and an empty `choices` array, the
 *    extra event include_usage causes; an event with both content and usage
 *    is kept) or replaced by tollgate's own end of stream (the cut, see
 *    tg_usage_feed()).
 *
 * SSE framing follows the WHATWG HTML "server-sent events" parser: CRLF, LF
 * or CR line ends (a CR ending one piece and an LF starting the next are one
 * line end), a blank line ends an event, only `data:` fields are read (one
 * space after the colon dropped, several lines joined by LF), a leading
 * UTF-8 BOM is skipped, and everything else (comments, event:, id:, retry:)
 * is forwarded untouched.  An event whose data passes TG_USAGE_EVENT_MAX, or
 * whose bytes pass TG_USAGE_RAW_MAX, is "oversized": it is forwarded as it
 * came (never stripped), `lost` is set, and reading resumes at the next
 * event.  On chat/completions an oversized event with data counts as one
 * content event of ceil(data characters / 4) tokens (conservative: the JSON
 * around the text counts too), so huge events cannot slip past the cut,
 * which then follows right after it.  At tg_usage_finish(), an unterminated
 * last event is treated as ended.
 *
 * Each event's data is read by a one-pass scanner that does not build a
 * tree: it accepts what jansson's json_loadb(JSON_REJECT_DUPLICATES) accepts
 * (RFC 8259 syntax, well-formed UTF-8, known escapes, surrogates only in
 * pairs, no \u0000, no duplicate key in any object, integers that fit
 * int64_t), and takes only the members named below, each at its own place
 * (a "usage" inside choices, or "content" inside an arguments string, is
 * not read).  An event the scanner cannot decide cheaply is parsed with
 * jansson instead: a key written with escapes, nesting deeper than 32,
 * more than 64 keys in the open objects, a real number that might overflow
 * a double.  The unit tests and fuzz_sse_usage check the scanner against
 * jansson (tg_usage_set_oracle()).  Data that is not a valid JSON object
 * sets `lost`.  The scanner allocates nothing, so an allocation failure no
 * longer loses an event (it still can when jansson reads it).  What
 * counts as output text ("content"), per API:
 *  - chat: choices[*].delta.content, .reasoning_content, .refusal and
 *    .tool_calls[*].function.arguments;
 *  - completions: choices[*].text;
 *  - responses: the `delta` string of events whose type is
 *    response.{output_text,refusal,function_call_arguments,reasoning_text,
 *    reasoning_summary_text}.delta.
 * Characters are Unicode code points of the decoded strings (an escape is
 * one, a surrogate pair \uD83D\uDE00 is one).  An event whose content strings hold at least one
 * character is a content event: it adds 1 to content_events and max(1, ceil(chars / 4)) to
 * observed_output.  An empty string (the usual first chat chunk
 * `"content":""`) is not content.
 *
 * Usage: chat, completions and embeddings read usage.prompt_tokens and
 * usage.completion_tokens (absent: 0); responses read usage.input_tokens and
 * usage.output_tokens, from `response.usage` of the response.completed,
 * response.incomplete and response.failed events, or from the top-level
 * `usage` of a JSON body.  Only a top-level `usage` (or response.usage) is
 * taken, never one nested deeper.  A later usage replaces an earlier one
 * (servers that report running usage in every chunk).  A usage that is not
 * an object of non-negative integers sets `lost`.
 *
 * JSON bodies are scanned, not parsed: a small state machine follows depth,
 * strings and escapes across pieces, copies the raw bytes of the top-level
 * "usage" object (at most TG_USAGE_JSON_MAX bytes) and parses only those with
 * jansson.  It counts the characters of the content strings of the body
 * (chat choices[*].message.{content,reasoning_content,refusal,
 * tool_calls[*].function.arguments}, completions choices[*].text, responses
 * output[*].content[*].{text,refusal}, output[*].arguments and
 * output[*].summary[*].text): an escape counts as one character (a
 * surrogate pair as two), and observed_output = ceil(chars / 4) for the
 * whole body, content_events = the number of non-empty content strings.
 * The scanner does not validate JSON; keys written with escapes are not
 * recognised; a second top-level "usage" sets `lost`.
 *
 * Prompt and completion text is never copied out of the module: it lives
 * only in the current event's bounded buffer.  The stream's id, created and
 * model (from the first event that has them) are kept for the cut.
 *
 * Not thread-safe; one object per response, on its worker's thread.
 */
#ifndef TG_USAGE_H
#define TG_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TG_USAGE_CUT 1                   /* feed()/finish(): tollgate ended the stream */
#define TG_USAGE_EVENT_MAX (64u * 1024u) /* data bytes of one SSE event */
#define TG_USAGE_RAW_MAX (128u * 1024u)  /* bytes of one SSE event as sent (held in transform) */
#define TG_USAGE_JSON_MAX 4096u          /* raw bytes of a JSON body's "usage" object */
#define TG_USAGE_STR_MAX 256u            /* id and model kept for synthesized events */

/* Which OpenAI API answered: decides where content and usage are. */
enum tg_usage_api {
    TG_USAGE_CHAT,        /* /v1/chat/completions */
    TG_USAGE_COMPLETIONS, /* /v1/completions */
    TG_USAGE_EMBEDDINGS,  /* /v1/embeddings (no output text) */
    TG_USAGE_RESPONSES,   /* /v1/responses */
};

/* How to read one response; copied by tg_usage_new(). */
struct tg_usage_opts {
    enum tg_usage_api api;    /* the API of the route */
    bool sse;                 /* the body is text/event-stream; else a JSON body */
    bool strip_usage;         /* SSE: drop usage-only events (the client did not ask) */
    uint64_t max_output;      /* SSE chat/completions: effective max_tokens to enforce; 0: none */
    uint64_t prompt_estimate; /* prompt tokens written in the usage event of a cut stream */
};

/* What was read so far; valid at any time, final after tg_usage_finish(). */
struct tg_usage_result {
    bool have_usage;            /* the upstream reported usage (the last one read is kept) */
    uint64_t prompt_tokens;     /* usage.prompt_tokens (responses: input_tokens) */
    uint64_t completion_tokens; /* usage.completion_tokens (responses: output_tokens) */
    uint64_t observed_output;   /* SSE: sum of max(1, ceil(chars/4)) over forwarded content
                                   events; JSON: ceil(content chars / 4) */
    uint64_t content_events;    /* SSE: forwarded content events; JSON: non-empty content strings */
    bool done;                  /* saw data: [DONE], a terminal responses event, or the end of
                                   the JSON document */
    bool cut;                   /* tollgate ended the stream itself (max_output) */
    bool lost;                  /* something could not be read (oversized or invalid event,
                                   bad usage, allocation failure): usage may be missing */
};

/*
 * Forward n bytes (n > 0) to the client.  p is valid only during the call
 * (it may point into the caller's own input).  0, or a negative error that
 * stops the tg_usage_* call which made it and is returned by it.
 */
typedef int tg_usage_emit_fn(void *arg, const char *p, size_t n);

struct tg_usage;

/* A reader for one response, options copied.  NULL on allocation failure. */
struct tg_usage *tg_usage_new(const struct tg_usage_opts *o);
/* Free the reader and everything it holds.  NULL is a no-op. */
void tg_usage_free(struct tg_usage *u);

/*
 * Read the next n bytes of the body (n may be 0) and forward what the client
 * gets through emit(arg, ...), synchronously, before returning.  The input is
 * only borrowed.  Returns:
 *   0             the bytes were handled (forwarded, held or dropped);
 *   TG_USAGE_CUT  a content event would pass max_output content events or
 *                 4 x max_output observed tokens: that event was not
 *                 forwarded; instead a final event (finish_reason "length"),
 *                 a usage event (prompt_estimate, observed_output; left out
 *                 when strip_usage is set, as the client did not ask for
 *                 usage) and `data: [DONE]` were emitted, each as
 *                 "data: <json>\n\n", with the upstream's id, created and
 *                 model.  The caller ends the client stream and closes the
 *                 upstream request; later calls emit nothing and return
 *                 TG_USAGE_CUT again;
 *   <0            emit's error (sticky: later calls return it and do
 *                 nothing), or TG_E_CLOSED after tg_usage_finish().
 * Parsing problems and allocation failures never fail the call: they set
 * result.lost and the bytes pass through.
 */
int tg_usage_feed(struct tg_usage *u, const char *p, size_t n, tg_usage_emit_fn *emit, void *arg);

/*
 * The upstream body ended: forward the bytes still held (a last event
 * without its blank line is read and forwarded, or stripped, or cut, as if
 * it had ended).  Same returns as tg_usage_feed(); a second call returns
 * TG_E_CLOSED.
 */
int tg_usage_finish(struct tg_usage *u, tg_usage_emit_fn *emit, void *arg);

/*
 * Testing: read every SSE event with jansson, the reference reader that the
 * scanner must agree with (unit tests and fuzz_sse_usage compare the two).
 * Slower; set it before the first feed().
 */
void tg_usage_set_oracle(struct tg_usage *u, bool on);

/* The result so far (owned by u, valid until tg_usage_free()). */
const struct tg_usage_result *tg_usage_result(const struct tg_usage *u);

#endif
