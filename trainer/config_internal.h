/* Shared between config.c (YAML → tree, loading, cross-field checks) and
 * config_schema.c (the key table, typing one value, printing). Not public API. */
#ifndef QT_TRAINER_CONFIG_INTERNAL_H
#define QT_TRAINER_CONFIG_INTERNAL_H

#include <stddef.h>

#include "config.h"

/* A YAML value with where it starts. Built from libyaml events with bounded depth and
 * node count, so the walk over it can recurse freely. */
typedef enum { QT_YN_SCALAR, QT_YN_SEQ, QT_YN_MAP } qt_yn_type;
typedef struct qt_ynode {
    qt_yn_type type;
    bool quoted;    /* quoted or tagged !!str: always a string, never a number/bool/null */
    int line, col;  /* 1-based */
    char *text;     /* scalars: NUL-terminated (len bytes; may hold NULs from escapes) */
    size_t len;
    struct qt_ynode **kids; /* SEQ: items; MAP: key, value, key, value, ... */
    int n, cap;
} qt_ynode;

typedef enum { QT_CK_BOOL, QT_CK_INT, QT_CK_FLOAT, QT_CK_STR, QT_CK_ENUM, QT_CK_SIZE,
               QT_CK_TARGETS, QT_CK_TRI } qt_cfg_kind;

enum {
    QT_CF_NULL = 1,     /* null allowed: stored as 0 / "" / the enum's 0 value */
    QT_CF_AUTO = 2,     /* sizes: "auto" allowed, stored as 0 */
    QT_CF_LO_OPEN = 4,  /* range excludes lo */
    QT_CF_HI_OPEN = 8,  /* range excludes hi */
    QT_CF_POW2 = 16,    /* integers: a power of two */
    QT_CF_NAME = 32,    /* strings: [A-Za-z0-9._-], not starting with '.' */
};

typedef struct qt_cfg_field {
    const char *key; /* "section.leaf" */
    qt_cfg_kind kind;
    size_t off, size; /* offset in qt_config; size of the char array for strings */
    unsigned flags;
    double lo, hi;    /* value range (bytes for sizes); hi = INFINITY for none */
    const char *const *names; /* enum value names (index = stored value), string choices */
    int n_names;
    const char *def;    /* default, as YAML text */
    const char *expect; /* "a positive integer": what error messages ask for */
} qt_cfg_field;

extern const qt_cfg_field qt_cfg_fields[];
extern const int qt_cfg_nfields;
extern const char *const qt_cfg_sections[];
extern const int qt_cfg_nsections;

/* Index of "section.leaf" in qt_cfg_fields, or -1. */
int qt_cfg_find(const char *key);
bool qt_cfg_is_section(const char *name);
/* Closest known key (or section, for a one-part name) to an unknown one, including the
 * names other QLoRA trainers use (lora_alpha, learning_rate, ...); NULL if none is close. */
const char *qt_cfg_suggest(const char *typed);

/* Type v by field f and store it into cfg. On error returns -1, writes the message body
 * ("key 'lora.r': expected ..., got ...") into msg and the offending node into *where. */
int qt_cfg_set(qt_config *cfg, const qt_cfg_field *f, const qt_ynode *v, const qt_ynode **where,
               char *msg, size_t n);
/* Is the stored value of f within its range? Same message body as qt_cfg_set. */
int qt_cfg_check(const qt_config *cfg, const qt_cfg_field *f, char *msg, size_t n);

#endif
