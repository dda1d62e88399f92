/* libFuzzer target for the NIfTI reader: the input is one single-file NIfTI (.nii bytes, or .nii.gz
 * bytes: gzip is recognized by its magic), parsed and converted by ml_nifti_read_mem with the output
 * dtype chosen by the input length (float32 / float64 / native), so header validation, the gzip path
 * (libdeflate + zlib fall-back) and every conversion kernel are reached.
 *
 * Build and run: `make fuzz` (all targets, FUZZ_TIME=600 s each), or by hand from the repository root
 * (clang-14 works):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fopenmp \
 *     -std=c11 -D_GNU_SOURCE -Imodules fuzz/fuzz_nifti.c modules/volume/ml_nifti.c modules/volume/ml_volume.c \
 *     modules/tensor/ml_core.c modules/tensor/ml_autograd.c modules/tensor/ml_ew.c modules/tensor/ml_index.c \
 *     modules/tensor/ml_reduce.c modules/tensor/ml_view.c -ldeflate -lz -lm -lpthread -o build/fuzz_nifti
 *   mkdir -p build/fuzz_corpus_nifti
 *   OMP_NUM_THREADS=1 build/fuzz_nifti -max_total_time=600 -max_len=65536 -rss_limit_mb=4096 \
 *     -artifact_prefix=fuzz/crashers_nifti/ build/fuzz_corpus_nifti fuzz/corpus_nifti
 * Seed corpus fuzz/corpus_nifti/: small files from tests/data/nifti (see its SOURCE.md) and one NIfTI-2
 * written by nibabel. Crashes land in fuzz/crashers_nifti/; tests/c/test_nifti.c replays every file
 * there and in fuzz/corpus_nifti/ (fuzz_crashers_regression). */
#include "volume/ml_nifti.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ml_nifti_read_opts o;
    ml_nifti_read_opts_init(&o);
    o.dtype = (ml_nifti_out)(size % 3);
    ml_volume *v = NULL;
    if (ml_nifti_read_mem(&v, data, size, "fuzz", &o) == ML_OK) {
        /* touch the result: geometry and one voxel */
        double sp[3];
        ml_volume_spacing(v, sp);
        int64_t idx[4] = {0, 0, 0, 0};
        (void)ml_tensor_get(v->data, idx);
        ml_volume_release(v);
    }
    return 0;
}
