/* C interface to the DCMTK shim (ml_dcmtk_shim.cpp, the only C++ file of medlua).
 *
 * The shim does only what needs DCMTK: parse a file (header values into plain C structs), hand out
 * the raw bytes of one frame (native transfer syntaxes, and JPEG / JPEG-LS / RLE through DCMTK's
 * free codecs), hand out the encapsulated fragments of one frame (JPEG 2000, decoded in C by
 * ml_j2k.c with OpenJPEG), write one 16-bit slice, edit tags of an existing file, make UIDs.
 * Everything else (series assembly, geometry, rescaling) is C11 in ml_dicom.c.
 *
 * Every function catches C++ exceptions. Errors: the return value is non-zero (an ML_DCM_E* code)
 * and err (errlen bytes, always NUL-terminated) holds the reason without the file name; the caller
 * adds the file. Functions are thread-safe on distinct ml_dcm_file handles once ml_dcm_global_init()
 * has run (it registers the codecs and is itself safe to call from several threads). */
#ifndef ML_DCMTK_SHIM_H
#define ML_DCMTK_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { ML_DCM_OK = 0, ML_DCM_EIO = 1, ML_DCM_EUNSUPPORTED = 2, ML_DCM_EOOM = 3, ML_DCM_EARG = 4 };

/* Transfer syntax classes (how the pixel data must be decoded). */
enum {
    ML_DCM_TS_NATIVE = 0, /* implicit/explicit little endian, explicit big endian, deflated */
    ML_DCM_TS_DCMTK = 1,  /* encapsulated, decoded by a registered DCMTK codec (JPEG, JPEG-LS, RLE) */
    ML_DCM_TS_J2K = 2,    /* JPEG 2000 (lossless only / lossy): fragments decoded with OpenJPEG */
    ML_DCM_TS_UNSUPPORTED = 3
};

/* Per-frame values of an enhanced (multi-frame) image, from the Per-Frame and Shared Functional
 * Groups. Missing values have their has_* flag 0. */
typedef struct ml_dcm_frameinfo {
    double ipp[3], iop[6], ps[2];
    double slope, intercept, thickness;
    int32_t temporal;     /* TemporalPositionIndex (0 if none) */
    int32_t stack_pos;    /* InStackPositionNumber (0 if none) */
    uint8_t has_ipp, has_iop, has_ps, has_rescale, has_thickness;
} ml_dcm_frameinfo;

typedef struct ml_dcm_header {
    char transfer_syntax[72];  /* UID ("" if the file has no meta header: implicit little endian) */
    char ts_name[72];          /* DCMTK's name of the transfer syntax */
    int ts_class;              /* ML_DCM_TS_* */
    char sop_class[72], sop_instance[72];
    char series_uid[72], study_uid[72], for_uid[72];
    char modality[16];
    char patient_id[72];
    char description[128];     /* SeriesDescription */
    char photometric[20];
    int32_t series_number, instance, temporal, acquisition;
    uint8_t has_series_number, has_instance, has_temporal;
    /* image pixel module */
    int32_t rows, cols, frames, bits_alloc, bits_stored, high_bit, pixel_rep, samples;
    uint8_t has_rows, has_cols, has_pixel_data, encapsulated;
    uint64_t pixel_length; /* byte length of a native PixelData value (0 for encapsulated) */
    /* geometry and values (classic single-frame attributes; for enhanced images the shared groups
     * are folded in here when present) */
    double ipp[3], iop[6], ps[2];
    double slope, intercept, thickness, spacing_between, gantry_tilt;
    double window_center, window_width;
    uint8_t has_ipp, has_iop, has_ps, has_rescale, has_thickness, has_spacing_between, has_window;
    uint8_t ps_from_imager; /* ps came from ImagerPixelSpacing (X-ray) */
    /* per-frame functional groups (enhanced images): nframeinfo entries or NULL */
    int32_t nframeinfo;
    ml_dcm_frameinfo *frameinfo; /* malloc'ed; freed by ml_dcm_header_free */
    /* GridFrameOffsetVector (RT Dose): frame offsets along the normal, or NULL */
    int32_t ngrid_offsets;
    double *grid_offsets;
    /* Siemens mosaic clues (ml_dicom.c decides what they mean) */
    char image_type[128];       /* ImageType (0008,0008), values joined by backslashes */
    char manufacturer[64];
    int32_t siemens_mosaic_n;   /* NumberOfImagesInMosaic (0019,xx0A) of "SIEMENS MR HEADER"; 0 if absent */
    int32_t acq_matrix[4];      /* AcquisitionMatrix (0018,1310): freq rows, freq cols, phase rows, phase cols */
    uint8_t has_acq_matrix;
    uint8_t *csa_image;         /* CSA image header (0029,xx10) of "SIEMENS CSA HEADER", malloc'ed, or NULL */
    size_t csa_image_len;
} ml_dcm_header;

typedef struct ml_dcm_file ml_dcm_file;

/* Register the DCMTK decoders (JPEG, JPEG-LS, RLE) and quieten DCMTK's logger. Idempotent. */
void ml_dcm_global_init(void);

/* Parse a file. Values larger than a few KB (PixelData) are not read now; they are read from the
 * file when a frame is requested. */
int ml_dcm_open(const char *path, ml_dcm_file **out, char *err, size_t errlen);
void ml_dcm_close(ml_dcm_file *f); /* NULL-safe */

/* Header values (see ml_dcm_header). */
int ml_dcm_read_header(ml_dcm_file *f, ml_dcm_header *h, char *err, size_t errlen);
void ml_dcm_header_free(ml_dcm_header *h);

/* One frame as stored integers in host byte order (bits_alloc/8 bytes per sample), for
 * ML_DCM_TS_NATIVE and ML_DCM_TS_DCMTK. buf holds at least rows*cols*samples*bits_alloc/8 bytes
 * (rounded up to even). start_fragment: 0 for the first call on a file, then pass the updated value
 * back when reading the frames in increasing order. */
int ml_dcm_frame_pixels(ml_dcm_file *f, uint32_t frame, void *buf, size_t bufsize, uint32_t *start_fragment,
                        char *err, size_t errlen);

/* The compressed bitstream of one frame of an encapsulated image (the concatenation of its
 * fragments), malloc'ed into *data (caller frees). nframes is NumberOfFrames. */
int ml_dcm_frame_bitstream(ml_dcm_file *f, uint32_t frame, uint32_t nframes, uint8_t **data, size_t *len,
                           char *err, size_t errlen);

/* Transfer syntax class and name of a UID ("" = implicit little endian). name may be NULL. */
int ml_dcm_ts_classify(const char *uid, char *name, size_t namelen);

/* A new globally unique UID (at most 64 chars) into out[72]. Thread-safe. */
void ml_dcm_new_uid(char out[72]);

/* ----------------------------------------------------------------- writing */
/* One slice of a series written by ml_dicom_write_series: every string may be "" (attribute
 * written empty where DICOM requires it, left out otherwise). */
typedef struct ml_dcm_wslice {
    const char *sop_class, *sop_instance, *study_uid, *series_uid, *for_uid;
    const char *modality, *patient_id, *patient_name, *study_description, *series_description;
    const char *study_date, *study_time, *study_id, *image_type;
    int32_t series_number, instance, temporal; /* temporal <= 0: not written */
    int32_t rows, cols;
    double ipp[3], iop[6], ps[2];
    double thickness, spacing_between, slice_location;
    double slope, intercept;
    double window_center, window_width;
    int has_window;
    int is_ct; /* CT Image Storage (RescaleType HU, KVP) rather than Secondary Capture */
} ml_dcm_wslice;

/* Write one slice (int16 pixels, row-major rows x cols) to path as explicit little endian. */
int ml_dcm_write_slice(const char *path, const ml_dcm_wslice *s, const int16_t *pixels, char *err, size_t errlen);

/* ------------------------------------------------------------------ editing */
/* Load in_path completely, set or delete tags, save to out_path with the same transfer syntax
 * (pixel data untouched). keys: a DICOM keyword ("DistanceSourceToDetector") or a tag
 * "(0018,1110)" / "0018,1110" / "00181110". values[i] NULL deletes the attribute; a value with
 * backslashes sets several values. */
int ml_dcm_edit(const char *in_path, const char *out_path, int n, const char *const *keys,
                const char *const *values, char *err, size_t errlen);

/* ------------------------------------------------------------------ reading tags */
/* Values of tags (keywords or "(gggg,eeee)", as in ml_dcm_edit) of a file, as DICOM strings (all
 * values joined by backslashes) into values[i] (malloc'ed; NULL when the file lacks the tag; caller
 * frees). Searches the dataset, then the file meta header. */
int ml_dcm_get_tags(const char *path, int n, const char *const *keys, char **values, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
