#include "proxy/err.h"

#include <uv.h>

const char *tg_strerror(int err)
{
    switch (err) {
    case TG_OK: return "success";
    case TG_E_NOMEM: return "out of memory";
    case TG_E_TOO_LARGE: return "too large";
    case TG_E_INVALID: return "invalid input";
    case TG_E_PROTO: return "protocol error";
    case TG_E_TIMEOUT: return "timed out";
    case TG_E_CLOSED: return "closed";
    case TG_E_NOTFOUND: return "not found";
    case TG_E_TLS: return "TLS error";
    case TG_E_UPSTREAM: return "upstream error";
    case TG_E_IO: return "I/O error";
    case TG_E_AGAIN: return "try again";
    default: break;
    }
    if (err < 0 && err > -20000)
        return uv_strerror(err);
    return "unknown error";
}
