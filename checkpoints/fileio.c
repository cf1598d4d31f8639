/* Durable file writes shared by every writer in checkpoints/: a temporary file in the
 * same folder, fsync, rename over the target, fsync the folder. A crash leaves either the
 * old file or the new one under the name, never a half-written file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints.h"

static int write_all(int fd, const void *buf, uint64_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (uint64_t)w;
    }
    return 0;
}

static void fsync_parent(const char *path) {
    char *dir = strdup(path);
    QT_CHECK(dir, "out of host memory");
    char *slash = strrchr(dir, '/');
    const char *dpath = ".";
    if (slash == dir) dpath = "/";
    else if (slash) *slash = 0, dpath = dir;
    int dfd = open(dpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
}

int ck_write_atomic(const char *path, const ck_chunk *chunks, int n, qt_err *e) {
    size_t plen = strlen(path) + 32;
    char *tmp = malloc(plen);
    QT_CHECK(tmp, "out of host memory");
    snprintf(tmp, plen, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        qt_errf(e, "%s: cannot create %s: %s; check that the folder exists and is writable", path, tmp,
                strerror(errno));
        free(tmp);
        return -1;
    }
    bool ok = true;
    for (int i = 0; i < n && ok; i++) ok = write_all(fd, chunks[i].data, chunks[i].len) == 0;
    int err = errno;
    if (ok && fsync(fd) != 0) ok = false, err = errno;
    if (close(fd) != 0 && ok) ok = false, err = errno;
    if (ok && rename(tmp, path) != 0) ok = false, err = errno;
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return qt_errf(e, "%s: writing failed: %s; check free disk space and permissions", path, strerror(err));
    }
    free(tmp);
    fsync_parent(path);
    return 0;
}

int ck_open_file(const char *path, uint64_t *size, qt_err *e) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qt_errf(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qt_errf(e, "%s: not a regular file", path);
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

int ck_mkdirs(const char *dir, qt_err *e) {
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    QT_CHECK(p, "out of host memory");
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char keep = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int err = errno;
            qt_errf(e, "cannot create folder %s: %s", p, strerror(err));
            free(p);
            return -1;
        }
        p[i] = keep;
    }
    struct stat st;
    int rc = stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : qt_errf(e, "%s exists and is not a folder", dir);
    free(p);
    return rc;
}
