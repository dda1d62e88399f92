/* libFuzzer target for the DICOM file path: the input is written to a temporary file and read with
 * ml_dicom_read (DCMTK parse through the shim, header checks, frame extraction, the pixel
 * converters, JPEG 2000 through OpenJPEG, the assembler), alternately as float32 and native.
 * Crashes inside DCMTK or OpenJPEG themselves are reported upstream, not fixed here.
 *
 * Build and run from the repository root: `make fuzz` (every target), or this target alone:
 *   make build-fuzz/fuzz_dicom_file
 *   mkdir -p build-fuzz/corpus_dicom_file
 *   OMP_NUM_THREADS=1 build-fuzz/fuzz_dicom_file -max_total_time=600 -max_len=65536 -rss_limit_mb=4096 \
 *     -artifact_prefix=fuzz/crashers_dicom_file/ build-fuzz/corpus_dicom_file fuzz/corpus_dicom_file
 * Seeds: fuzz/corpus_dicom_file (small real files). tests/c/test_dicom.c replays the crashers. */
#include "volume/ml_dicom.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void quiet(const char *msg, void *ud) {
    (void)msg;
    (void)ud;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/medlua_fuzz_dicom_%d.dcm", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    if (size) fwrite(data, 1, size, f);
    fclose(f);
    ml_set_warn_handler(quiet, NULL);
    ml_dicom_read_opts o;
    ml_dicom_read_opts_init(&o);
    o.native = size & 1;
    ml_volume *v = NULL;
    if (ml_dicom_read(&v, path, &o) == ML_OK) {
        int64_t idx[4] = {0, 0, 0, 0};
        (void)ml_tensor_get(v->data, idx);
        ml_volume_release(v);
    }
    unlink(path);
    return 0;
}
