/* TEMPORARY local stub (not committed): replaced by the runtime branch's ml_cuda_stub.c */
#include "ml_cuda.h"
static ml_err nocuda(void) { return ml_seterr(ML_ERR_DEVICE, "CUDA: built without CUDA"); }
bool ml_cuda_compiled(void) { return false; }
bool ml_cuda_available(void) { return false; }
const char *ml_cuda_status(void) { return "built without CUDA"; }
int ml_cuda_device_count(void) { return 0; }
const char *ml_cuda_device_name(int dev) { (void)dev; return ""; }
ml_err ml_cuda_device_memory(int dev, size_t *f, size_t *t) { (void)dev; *f = *t = 0; return nocuda(); }
ml_err ml_cuda_synchronize(int dev) { (void)dev; return nocuda(); }
void *ml_cuda_malloc(size_t n, int dev) { (void)n; (void)dev; nocuda(); return NULL; }
void ml_cuda_free(void *p, int dev) { (void)p; (void)dev; }
void ml_cuda_empty_cache(int dev) { (void)dev; }
void ml_cuda_mem_stats(int dev, ml_cuda_mem *o) { (void)dev; *o = (ml_cuda_mem){0}; }
void ml_cuda_reset_peak(int dev) { (void)dev; }
ml_err ml_cuda_memcpy(void *d, int dd, const void *s, int sd, size_t n) { (void)d; (void)dd; (void)s; (void)sd; (void)n; return nocuda(); }
ml_err ml_cuda_ew(int iop, int kd, int ndim, const int64_t *shape, int nops, const ml_cuda_opnd *ops, const double *p) { (void)iop; (void)kd; (void)ndim; (void)shape; (void)nops; (void)ops; (void)p; return nocuda(); }
ml_err ml_cuda_copy(int ndim, const int64_t *shape, const ml_cuda_opnd *d, const ml_cuda_opnd *s) { (void)ndim; (void)shape; (void)d; (void)s; return nocuda(); }
ml_err ml_cuda_fill(int ndim, const int64_t *shape, const ml_cuda_opnd *d, double v) { (void)ndim; (void)shape; (void)d; (void)v; return nocuda(); }
ml_err ml_cuda_reduce(int kind, int kd, int ndim, const int64_t *shape, const bool *r, const ml_cuda_opnd *o, const ml_cuda_opnd *i, const ml_cuda_opnd *x) { (void)kind; (void)kd; (void)ndim; (void)shape; (void)r; (void)o; (void)i; (void)x; return nocuda(); }
ml_err ml_cuda_gemm(int kd, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void *a, int64_t lda, int64_t sa, const void *b, int64_t ldb, int64_t sb, void *c, int64_t ldc, int64_t sc, int64_t batch, double alpha, double beta, int dev) { (void)kd; (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)a; (void)lda; (void)sa; (void)b; (void)ldb; (void)sb; (void)c; (void)ldc; (void)sc; (void)batch; (void)alpha; (void)beta; (void)dev; return nocuda(); }
void ml_cuda_set_tf32(bool on) { (void)on; }
bool ml_cuda_tf32(void) { return false; }
ml_err ml_cuda_conv_fwd(int kd, const ml_cuda_conv_desc *d, const void *x, const void *w, void *y, int dev) { (void)kd; (void)d; (void)x; (void)w; (void)y; (void)dev; return nocuda(); }
ml_err ml_cuda_conv_bwd_data(int kd, const ml_cuda_conv_desc *d, const void *w, const void *dy, void *dx, int dev) { (void)kd; (void)d; (void)w; (void)dy; (void)dx; (void)dev; return nocuda(); }
ml_err ml_cuda_conv_bwd_filter(int kd, const ml_cuda_conv_desc *d, const void *x, const void *dy, void *dw, int dev) { (void)kd; (void)d; (void)x; (void)dy; (void)dw; (void)dev; return nocuda(); }
void ml_cuda_set_benchmark(bool on) { (void)on; }
bool ml_cuda_benchmark(void) { return false; }
