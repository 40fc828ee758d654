/* A minimal JSON reader for sn_bench --torch (reads torch_baseline.py's result file). */
#ifndef SN_BENCH_JSON_H
#define SN_BENCH_JSON_H

#include <stddef.h>

typedef enum { SNJ_NULL, SNJ_BOOL, SNJ_NUMBER, SNJ_STRING, SNJ_ARRAY, SNJ_OBJECT } snj_kind_t;

typedef struct snj_value {
  snj_kind_t kind;
  double number;             /* SNJ_NUMBER; SNJ_BOOL: 0 or 1 */
  char *string;              /* SNJ_STRING (UTF-8, \u escapes outside ASCII become '?') */
  size_t count;              /* SNJ_ARRAY / SNJ_OBJECT: number of items */
  struct snj_value **items;  /* SNJ_ARRAY / SNJ_OBJECT */
  char **keys;               /* SNJ_OBJECT: keys[i] names items[i] */
} snj_value_t;

/* Parse a whole document. NULL on error, with a message (and byte offset) in err. */
snj_value_t *snj_parse(const char *text, char *err, size_t err_size);
void snj_free(snj_value_t *v);
/* Member `key` of an object, or NULL (also when v is not an object). */
const snj_value_t *snj_get(const snj_value_t *v, const char *key);
/* Convenience: string member or NULL; number member or `fallback`. */
const char *snj_get_string(const snj_value_t *v, const char *key);
double snj_get_number(const snj_value_t *v, const char *key, double fallback);

#endif
