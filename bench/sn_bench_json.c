/* A minimal JSON reader for sn_bench --torch. Recursive descent, depth-limited. */
#include "sn_bench_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *s;
  size_t pos;
  char *err;
  size_t err_size;
  int failed;
} parser_t;

static void fail(parser_t *p, const char *what) {
  if (!p->failed) {
    p->failed = 1;
    snprintf(p->err, p->err_size, "%s at byte %zu", what, p->pos);
  }
}

static void skip_ws(parser_t *p) {
  while (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
         p->s[p->pos] == '\r')
    p->pos++;
}

static snj_value_t *new_value(parser_t *p, snj_kind_t kind) {
  snj_value_t *v = calloc(1, sizeof *v);
  if (!v) fail(p, "out of memory");
  else v->kind = kind;
  return v;
}

static char *parse_string_raw(parser_t *p) {
  /* p->s[p->pos] == '"' */
  size_t cap = 16, len = 0;
  char *out = malloc(cap);
  if (!out) {
    fail(p, "out of memory");
    return NULL;
  }
  p->pos++;
  for (;;) {
    char c = p->s[p->pos];
    if (c == '\0') {
      fail(p, "unterminated string");
      free(out);
      return NULL;
    }
    p->pos++;
    if (c == '"') break;
    if ((unsigned char)c < 0x20) {
      fail(p, "control character in string");
      free(out);
      return NULL;
    }
    if (c == '\\') {
      char e = p->s[p->pos++];
      switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
          unsigned code = 0;
          for (int i = 0; i < 4; i++) {
            char h = p->s[p->pos++];
            code <<= 4;
            if (h >= '0' && h <= '9') code |= (unsigned)(h - '0');
            else if (h >= 'a' && h <= 'f') code |= (unsigned)(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') code |= (unsigned)(h - 'A' + 10);
            else {
              fail(p, "bad \\u escape");
              free(out);
              return NULL;
            }
          }
          c = code < 0x80 ? (char)code : '?';
          break;
        }
        default:
          fail(p, "bad escape");
          free(out);
          return NULL;
      }
    }
    if (len + 2 > cap) {
      cap *= 2;
      char *n = realloc(out, cap);
      if (!n) {
        fail(p, "out of memory");
        free(out);
        return NULL;
      }
      out = n;
    }
    out[len++] = c;
  }
  out[len] = '\0';
  return out;
}

static int push_item(parser_t *p, snj_value_t *v, snj_value_t *item, char *key) {
  snj_value_t **items = realloc(v->items, (v->count + 1) * sizeof *items);
  if (!items) {
    fail(p, "out of memory");
    return 0;
  }
  v->items = items;
  if (v->kind == SNJ_OBJECT) {
    char **keys = realloc(v->keys, (v->count + 1) * sizeof *keys);
    if (!keys) {
      fail(p, "out of memory");
      return 0;
    }
    v->keys = keys;
    v->keys[v->count] = key;
  }
  v->items[v->count++] = item;
  return 1;
}

static snj_value_t *parse_value(parser_t *p, int depth) {
  if (depth > 64) {
    fail(p, "nesting too deep");
    return NULL;
  }
  skip_ws(p);
  char c = p->s[p->pos];
  if (c == '{' || c == '[') {
    const int is_obj = c == '{';
    const char close = is_obj ? '}' : ']';
    snj_value_t *v = new_value(p, is_obj ? SNJ_OBJECT : SNJ_ARRAY);
    if (!v) return NULL;
    p->pos++;
    skip_ws(p);
    if (p->s[p->pos] == close) {
      p->pos++;
      return v;
    }
    for (;;) {
      char *key = NULL;
      if (is_obj) {
        skip_ws(p);
        if (p->s[p->pos] != '"') {
          fail(p, "expected a string key");
          snj_free(v);
          return NULL;
        }
        key = parse_string_raw(p);
        if (!key) {
          snj_free(v);
          return NULL;
        }
        skip_ws(p);
        if (p->s[p->pos] != ':') {
          fail(p, "expected ':'");
          free(key);
          snj_free(v);
          return NULL;
        }
        p->pos++;
      }
      snj_value_t *item = parse_value(p, depth + 1);
      if (!item || !push_item(p, v, item, key)) {
        free(key);
        snj_free(item);
        snj_free(v);
        return NULL;
      }
      skip_ws(p);
      if (p->s[p->pos] == ',') {
        p->pos++;
        continue;
      }
      if (p->s[p->pos] == close) {
        p->pos++;
        return v;
      }
      fail(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
      snj_free(v);
      return NULL;
    }
  }
  if (c == '"') {
    snj_value_t *v = new_value(p, SNJ_STRING);
    if (!v) return NULL;
    v->string = parse_string_raw(p);
    if (!v->string) {
      free(v);
      return NULL;
    }
    return v;
  }
  if (strncmp(p->s + p->pos, "true", 4) == 0 || strncmp(p->s + p->pos, "false", 5) == 0) {
    snj_value_t *v = new_value(p, SNJ_BOOL);
    if (!v) return NULL;
    v->number = c == 't';
    p->pos += c == 't' ? 4 : 5;
    return v;
  }
  if (strncmp(p->s + p->pos, "null", 4) == 0) {
    p->pos += 4;
    return new_value(p, SNJ_NULL);
  }
  if (strncmp(p->s + p->pos, "NaN", 3) == 0 || strncmp(p->s + p->pos, "Infinity", 8) == 0 ||
      strncmp(p->s + p->pos, "-Infinity", 9) == 0) {
    /* Python's json.dump writes these for non-finite floats. */
    fail(p, "non-finite number (NaN/Infinity) is not JSON");
    return NULL;
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    char *end = NULL;
    double d = strtod(p->s + p->pos, &end);
    if (end == p->s + p->pos) {
      fail(p, "bad number");
      return NULL;
    }
    snj_value_t *v = new_value(p, SNJ_NUMBER);
    if (!v) return NULL;
    v->number = d;
    p->pos = (size_t)(end - p->s);
    return v;
  }
  fail(p, c ? "unexpected character" : "unexpected end of input");
  return NULL;
}

snj_value_t *snj_parse(const char *text, char *err, size_t err_size) {
  parser_t p = {text, 0, err, err_size, 0};
  if (err_size) err[0] = '\0';
  snj_value_t *v = parse_value(&p, 0);
  if (v) {
    skip_ws(&p);
    if (p.s[p.pos] != '\0') {
      fail(&p, "trailing characters after the document");
      snj_free(v);
      return NULL;
    }
  }
  return v;
}

void snj_free(snj_value_t *v) {
  if (!v) return;
  for (size_t i = 0; i < v->count; i++) {
    snj_free(v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->string);
  free(v);
}

const snj_value_t *snj_get(const snj_value_t *v, const char *key) {
  if (!v || v->kind != SNJ_OBJECT) return NULL;
  for (size_t i = 0; i < v->count; i++)
    if (strcmp(v->keys[i], key) == 0) return v->items[i];
  return NULL;
}

const char *snj_get_string(const snj_value_t *v, const char *key) {
  const snj_value_t *m = snj_get(v, key);
  return m && m->kind == SNJ_STRING ? m->string : NULL;
}

double snj_get_number(const snj_value_t *v, const char *key, double fallback) {
  const snj_value_t *m = snj_get(v, key);
  return m && m->kind == SNJ_NUMBER ? m->number : fallback;
}
