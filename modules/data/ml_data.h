/* medlua data pipeline: MONAI-style dictionary transforms executed by C worker threads.
 * Lua-free core (never include lua.h here).
 *
 * Samples
 *  - A sample is a dictionary of named values (ml_dsample): strings (file paths), numbers, booleans and
 *    image tensors. An image value is a float32 tensor of shape [C, X, Y, Z] (any strides) plus a 4x4
 *    voxel-to-world affine (RAS+ mm, row-major, as ml_volume.h) and its source file name.
 *    `no_channel` marks an image whose channel dim was not asked for yet (MONAI's "no_channel": the
 *    user sees [X, Y, Z] until EnsureChannelFirst); its tensor is still stored as [1, X, Y, Z].
 *  - A transform maps a list of samples to a list of samples (ml_dlist): most map each sample to one,
 *    RandCropByPosNegLabel maps one to num_samples.
 *  - Transforms never modify an input tensor in place unless they hold the only reference to it (the
 *    cache of CacheDataset shares tensors with the samples it hands out: copy on write).
 *
 * Randomness
 *  - Every random draw comes from a counter-based stream (Philox4x32-10 of ml_tensor.h) keyed by
 *    (seed, epoch, dataset index, transform index, sub-sample index): a sample's augmentation does not
 *    depend on which thread made it, in what order, or how many workers there are.
 *
 * Threads
 *  - A loader owns num_workers pthreads. Each runs load + transforms of whole samples single-threaded
 *    (its OpenMP regions are made inactive: omp_set_max_active_levels(0)), writes the result into a
 *    bounded ring of `prefetch` batch slots; the worker that finishes the last sample of a batch
 *    collates it. The main thread pops finished batches in order. No Lua state is touched by workers.
 *  - Errors of a sample (missing file, ...) are stored with the sample and reported by ml_loader_next
 *    for the batch that needs it, naming the dataset index.
 *
 * Errors: ml_err + ml_seterr message naming the transform (MONAI name, e.g. "RandCropByPosNegLabeld"),
 * the key and the reason. */
#ifndef ML_DATA_H
#define ML_DATA_H

#include "tensor/ml_tensor.h"

#define ML_DATA_KEY_MAX 64  /* key length limit (bytes, including the terminating 0) */
#define ML_DATA_MAX_KEYS 16 /* keys per transform */

/* ------------------------------------------------------------------ samples */
typedef enum { ML_DV_NIL = 0, ML_DV_STR, ML_DV_NUM, ML_DV_INT, ML_DV_BOOL, ML_DV_TENSOR } ml_dval_kind;

typedef struct ml_dval {
    char key[ML_DATA_KEY_MAX];
    int kind;           /* ml_dval_kind */
    char *str;          /* STR: the value; TENSOR: source file name or NULL (owned) */
    double num;         /* NUM */
    int64_t inum;       /* INT */
    bool b;             /* BOOL */
    ml_tensor *t;       /* TENSOR: float32 [C, X, Y, Z] (owned reference) */
    double affine[16];  /* TENSOR: voxel -> RAS+ mm */
    bool no_channel;    /* TENSOR: shown as [X, Y, Z] (C == 1) */
} ml_dval;

typedef struct ml_dsample {
    int n, cap;
    ml_dval *v;
} ml_dsample;

typedef struct ml_dlist {
    int n, cap;
    ml_dsample **s;
} ml_dlist;

ml_dsample *ml_dsample_new(void); /* NULL + error on OOM */
void ml_dsample_free(ml_dsample *s);
ml_dsample *ml_dsample_copy(const ml_dsample *s); /* tensors retained, strings copied */
ml_dval *ml_dsample_get(ml_dsample *s, const char *key);
const ml_dval *ml_dsample_cget(const ml_dsample *s, const char *key);
/* Set (replace) a value; the sample takes the tensor reference (t) and copies strings. */
ml_err ml_dsample_set_str(ml_dsample *s, const char *key, const char *v);
ml_err ml_dsample_set_num(ml_dsample *s, const char *key, double v);
ml_err ml_dsample_set_int(ml_dsample *s, const char *key, int64_t v);
ml_err ml_dsample_set_bool(ml_dsample *s, const char *key, bool v);
/* t: any dtype, [C, X, Y, Z] or (no_channel) [X, Y, Z]; converted to float32 [C, X, Y, Z]. Steals t
 * (also on error). affine NULL: identity. */
ml_err ml_dsample_set_tensor(ml_dsample *s, const char *key, ml_tensor *t, const double affine[16],
                             const char *filename, bool no_channel);
int64_t ml_dsample_bytes(const ml_dsample *s);

ml_dlist *ml_dlist_new(void);
void ml_dlist_free(ml_dlist *l); /* frees the samples too; NULL-safe */
ml_err ml_dlist_push(ml_dlist *l, ml_dsample *s); /* takes s (freed on error) */
ml_dlist *ml_dlist_copy(const ml_dlist *l);
int64_t ml_dlist_bytes(const ml_dlist *l);

/* ---------------------------------------------------------------- randomness */
typedef struct ml_drng {
    uint64_t key, ctr;
    uint32_t buf[4];
    int avail;
} ml_drng;

uint64_t ml_data_mix(uint64_t a, uint64_t b); /* splitmix64-based hash of two words */
void ml_drng_init(ml_drng *r, uint64_t seed, uint64_t epoch, uint64_t index, uint64_t tidx, uint64_t sub);
uint32_t ml_drng_u32(ml_drng *r);
double ml_drng_uniform(ml_drng *r);                      /* [0, 1), 53 bits */
double ml_drng_range(ml_drng *r, double lo, double hi);  /* [lo, hi) */
int64_t ml_drng_randint(ml_drng *r, int64_t n);          /* [0, n), n >= 1 */
double ml_drng_normal(ml_drng *r);                       /* N(0, 1) */
/* Fill n float32 values with N(mean, std), counter-based (independent of threads); advances r. */
void ml_drng_fill_normal(ml_drng *r, float *out, int64_t n, double mean, double std);

/* ---------------------------------------------------------------- transforms */
typedef enum {
    ML_XF_LOAD = 0,          /* LoadImaged */
    ML_XF_CHANNEL_FIRST,     /* EnsureChannelFirstd */
    ML_XF_SPACING,           /* Spacingd */
    ML_XF_ORIENTATION,       /* Orientationd */
    ML_XF_SCALE_RANGE,       /* ScaleIntensityRanged */
    ML_XF_NORMALIZE,         /* NormalizeIntensityd */
    ML_XF_CROP_FOREGROUND,   /* CropForegroundd */
    ML_XF_SPATIAL_PAD,       /* SpatialPadd */
    ML_XF_CENTER_CROP,       /* CenterSpatialCropd */
    ML_XF_NOOP,              /* EnsureTyped, ToTensord */
    ML_XF_RAND_SPATIAL_CROP, /* RandSpatialCropd */
    ML_XF_RAND_POSNEG_CROP,  /* RandCropByPosNegLabeld */
    ML_XF_RAND_ROT90,        /* RandRotate90d */
    ML_XF_RAND_FLIP,         /* RandFlipd */
    ML_XF_RAND_AFFINE,       /* RandAffined */
    ML_XF_RAND_NOISE,        /* RandGaussianNoised */
    ML_XF_RAND_SCALE_INT,    /* RandScaleIntensityd */
    ML_XF_RAND_SHIFT_INT,    /* RandShiftIntensityd */
    ML_XF_NTYPES
} ml_xf_type;

enum { ML_XF_NEAREST = 0, ML_XF_LINEAR = 1 };
enum { ML_XF_PAD_ZEROS = 0, ML_XF_PAD_BORDER = 1, ML_XF_PAD_REFLECTION = 2 };

typedef struct ml_xform {
    int type;                /* ml_xf_type */
    char name[40];           /* for messages: "RandFlipd" */
    int nkeys;
    char keys[ML_DATA_MAX_KEYS][ML_DATA_KEY_MAX];
    int mode[ML_DATA_MAX_KEYS]; /* per key: ML_XF_NEAREST / ML_XF_LINEAR */
    bool allow_missing_keys;
    double prob;             /* random transforms: probability to apply (1 for crops) */
    /* LoadImaged */
    bool ensure_channel_first;
    /* Spacingd */
    double pixdim[3];        /* <= 0: keep that axis */
    /* Orientationd */
    char axcodes[4];
    /* ScaleIntensityRanged */
    double a_min, a_max, b_min, b_max;
    bool has_b_min, has_b_max, clip;
    /* NormalizeIntensityd */
    bool nonzero, channel_wise;
    int nsub, ndiv;          /* 0: computed; 1: one value; C: per channel */
    double sub[ML_DATA_MAX_KEYS], div[ML_DATA_MAX_KEYS];
    /* CropForegroundd */
    char source_key[ML_DATA_KEY_MAX];
    double threshold;        /* select_fn: value > threshold (MONAI's is_positive: 0) */
    int64_t margin[3];
    bool allow_smaller;
    int64_t k_divisible[3];
    int nchan_idx;
    int channel_indices[ML_DATA_MAX_KEYS];
    /* sizes: SpatialPadd / CenterSpatialCropd / RandSpatialCropd roi_size / RandCropByPosNegLabeld
     * spatial_size / RandAffined spatial_size (entries <= 0: the image's size) */
    int64_t size[3];
    bool has_size;
    int64_t max_size[3];     /* RandSpatialCropd max_roi_size (<= 0: image size) */
    bool random_center, random_size;
    bool pad_end;            /* SpatialPadd method "end" (default "symmetric") */
    double pad_value;
    /* RandCropByPosNegLabeld */
    char label_key[ML_DATA_KEY_MAX], image_key[ML_DATA_KEY_MAX];
    double pos, neg, image_threshold;
    int num_samples;
    /* RandRotate90d */
    int max_k;
    int axes[2];
    /* RandFlipd: bit a set = flip spatial axis a */
    int flip_mask;
    /* RandAffined: ranges [lo, hi] per parameter; n* = number of parameters given */
    int nrot, nshear, ntrans, nscale;
    double rot[3][2], shear[6][2], trans[3][2], scale[3][2];
    int padding_mode;        /* ML_XF_PAD_* */
    /* RandGaussianNoised */
    double mean, std;
    bool sample_std;
    /* RandScaleIntensityd (factors) / RandShiftIntensityd (offsets) */
    double lo, hi;
} ml_xform;

void ml_xform_init(ml_xform *x, int type, const char *name); /* MONAI defaults for the type */
bool ml_xform_is_random(const ml_xform *x);

typedef struct ml_xctx {
    uint64_t seed, epoch, index;
    int tidx;               /* index of the transform in its pipeline */
} ml_xctx;

/* Apply one transform to every sample of *list (in place, or *list replaced by a new list). On error
 * *list is still a valid list (possibly partly transformed) that the caller frees. */
ml_err ml_xform_apply(const ml_xform *x, ml_dlist **list, const ml_xctx *ctx);

typedef struct ml_pipeline {
    int refcount;
    int n;
    ml_xform *x;
} ml_pipeline;

ml_pipeline *ml_pipeline_new(int n, const ml_xform *x); /* copies x; NULL + error on OOM */
void ml_pipeline_retain(ml_pipeline *p);
void ml_pipeline_release(ml_pipeline *p);
/* Index of the first random transform (n if none). */
int ml_pipeline_first_random(const ml_pipeline *p);
/* Run transforms [from, to) on *list. */
ml_err ml_pipeline_run(const ml_pipeline *p, int from, int to, ml_dlist **list, uint64_t seed, uint64_t epoch,
                       uint64_t index);

/* ------------------------------------------------------------------ collate */
enum { ML_COLLATE_STACK = 0, ML_COLLATE_PAD = 1 };

typedef struct ml_cfield {
    char key[ML_DATA_KEY_MAX];
    int kind;            /* ML_DV_TENSOR: t = [B, C, X, Y, Z] (or [B, X, Y, Z] when no_channel), affine
                          * [B, 4, 4] float64, strs = file names (entries may be NULL);
                          * ML_DV_NUM / ML_DV_INT / ML_DV_BOOL: t = [B] float64 / int64 / bool;
                          * ML_DV_STR: strs */
    ml_tensor *t, *affine;
    char **strs;         /* B entries (owned) or NULL */
    bool no_channel;
} ml_cfield;

typedef struct ml_batch {
    int64_t B;           /* samples in the batch (dataset items x samples per item) */
    int nf;
    ml_cfield *f;
} ml_batch;

/* Collate samples (all must have the same keys and value kinds). mode ML_COLLATE_STACK: image shapes
 * must agree (error naming the key and both shapes); ML_COLLATE_PAD: images are padded with 0 to the
 * largest size on each axis, symmetrically as MONAI's pad_list_data_collate (affines updated). */
ml_err ml_collate(ml_batch **out, ml_dsample *const *s, int64_t n, int mode);
void ml_batch_free(ml_batch *b);

/* ------------------------------------------------------------------ dataset */
typedef struct ml_dataset ml_dataset;

typedef struct ml_dataset_opts {
    int native_end;      /* transforms [0, native_end) run natively (the rest is Lua, on the main thread) */
    int cache_upto;      /* > 0: cache the output of transforms [0, cache_upto) (CacheDataset) */
    int64_t cache_n;     /* items [0, cache_n) may be cached */
    int64_t max_bytes;   /* cache budget (<= 0: unlimited) */
} ml_dataset_opts;

/* items: n input samples (the dataset takes them; they are freed with it, also on error). */
ml_err ml_dataset_new(ml_dataset **out, ml_dsample **items, int64_t n, ml_pipeline *p, const ml_dataset_opts *o);
void ml_dataset_retain(ml_dataset *d);
void ml_dataset_release(ml_dataset *d);
int64_t ml_dataset_len(const ml_dataset *d);
const ml_pipeline *ml_dataset_pipeline(const ml_dataset *d);
/* The samples of item i (0-based) after the native transforms. Thread-safe. */
ml_err ml_dataset_get(ml_dataset *d, int64_t i, uint64_t seed, uint64_t epoch, ml_dlist **out);
/* Fill the cache (items [0, cache_n)) with nthreads threads. On error the message names the item. */
ml_err ml_dataset_fill_cache(ml_dataset *d, int nthreads);

typedef struct ml_cache_info {
    int64_t items, bytes, skipped, hits, misses, cache_n, max_bytes;
} ml_cache_info;
void ml_dataset_cache_info(ml_dataset *d, ml_cache_info *ci);

/* ------------------------------------------------------------------- loader */
typedef struct ml_loader ml_loader;

typedef struct ml_loader_opts {
    int64_t batch_size;  /* dataset items per batch (default 1) */
    bool shuffle, drop_last;
    int num_workers;     /* 0: samples are made on the calling thread inside ml_loader_next */
    int prefetch;        /* batch slots in flight (made or being made) ahead of the consumer; >= 1 */
    uint64_t seed;       /* shuffling */
    uint64_t xform_seed; /* transform randomness (Compose:set_random_state, else the loader seed) */
    int collate;         /* ML_COLLATE_*; -1: no collation (ml_loader_next returns the samples) */
} ml_loader_opts;

void ml_loader_opts_init(ml_loader_opts *o);
ml_err ml_loader_new(ml_loader **out, ml_dataset *d, const ml_loader_opts *o);
void ml_loader_free(ml_loader *l); /* stops and joins the workers; NULL-safe */
int64_t ml_loader_nbatches(const ml_loader *l);
/* Start an epoch (cancels one in progress). Order: shuffled by (seed, epoch) when shuffle. */
ml_err ml_loader_start(ml_loader *l, uint64_t epoch);
/* The next batch of the epoch: *batch (collated) or *samples (collate -1), NULL both at the end.
 * *index (may be NULL) receives the dataset indices (0-based, malloc'ed, *nindex entries) of the batch's
 * items (collated) or of each sample (collate -1). */
ml_err ml_loader_next(ml_loader *l, ml_batch **batch, ml_dlist **samples, int64_t **index, int64_t *nindex);
/* Cancel the epoch in progress (workers finish the sample they are making). */
void ml_loader_stop(ml_loader *l);

typedef struct ml_loader_stats {
    int64_t batches, samples, epoch;
    double wait_s;      /* main thread blocked in ml_loader_next */
    double step_s;      /* main thread between batches (outside ml_loader_next) */
    double produce_s;   /* worker time spent making samples (summed over workers) */
    double collate_s;   /* time spent collating */
    int num_workers, prefetch;
} ml_loader_stats;
void ml_loader_get_stats(ml_loader *l, ml_loader_stats *s);
void ml_loader_reset_stats(ml_loader *l);

/* ------------------------------------------------------------------ helpers */
/* Sorted entries of a directory (no "." / ".." / hidden names); *names malloc'ed, free with
 * ml_data_free_names. */
ml_err ml_data_listdir(const char *dir, char ***names, int *n);
void ml_data_free_names(char **names, int n);
double ml_data_now(void); /* monotonic seconds */

#endif
