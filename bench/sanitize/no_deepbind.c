/* LD_PRELOAD shim for the sanitizer run only: OpenVINO's TBB dlopens libtbbbind with RTLD_DEEPBIND, which the
 * sanitizer runtime refuses (google/sanitizers#611). This dlopen drops that flag and hands the call on. */
#define _GNU_SOURCE
#include <dlfcn.h>

void* dlopen(const char* file, int mode) {
  static void* (*next)(const char*, int);
  if (!next) next = (void* (*)(const char*, int))dlsym(RTLD_NEXT, "dlopen");
  return next(file, mode & ~RTLD_DEEPBIND);
}
