// DCMTK shim: the only C++ in medlua. Thin calls into DCMTK behind the C interface of
// ml_dcmtk_shim.h; no series logic, no geometry, no rescaling here (that is ml_dicom.c).
#include "ml_dcmtk_shim.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcvrds.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmdata/dccodec.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/oflog/oflog.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <cerrno>
#include <unistd.h>
#include <zlib.h>

struct ml_dcm_file {
    DcmFileFormat ff;
    std::string inflated; // temporary file holding the inflated dataset of a deflated file ("" if none)
    ~ml_dcm_file() {
        if (!inflated.empty()) unlink(inflated.c_str());
    }
};

namespace {

// values up to this size are read at parse time; larger ones (pixel data) when they are needed
const Uint32 kLazyBytes = 4096;

void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void copystr(char *dst, size_t n, const OFString &s) {
    size_t k = s.length() < n - 1 ? s.length() : n - 1;
    memcpy(dst, s.c_str(), k);
    dst[k] = '\0';
}

bool get_str(DcmItem *it, const DcmTagKey &tag, char *dst, size_t n) {
    OFString s;
    dst[0] = '\0';
    if (it->findAndGetOFString(tag, s).good()) {
        copystr(dst, n, s);
        return true;
    }
    return false;
}

bool get_f64(DcmItem *it, const DcmTagKey &tag, double *out, int count) {
    for (int i = 0; i < count; i++) {
        Float64 v;
        if (it->findAndGetFloat64(tag, v, (unsigned long)i).bad() || !std::isfinite(v)) return false;
        out[i] = v;
    }
    return true;
}

bool get_i32(DcmItem *it, const DcmTagKey &tag, int32_t *out) {
    Sint32 v;
    if (it->findAndGetSint32(tag, v).good()) {
        *out = v;
        return true;
    }
    OFString s; // IS with odd content, or a VR findAndGetSint32 does not convert
    if (it->findAndGetOFString(tag, s).good() && !s.empty()) {
        char *end = NULL;
        long x = strtol(s.c_str(), &end, 10);
        if (end != s.c_str()) {
            *out = (int32_t)x;
            return true;
        }
    }
    return false;
}

bool get_u16(DcmItem *it, const DcmTagKey &tag, int32_t *out) {
    Uint16 v;
    if (it->findAndGetUint16(tag, v).good()) {
        *out = v;
        return true;
    }
    return false;
}

// the element (group, xxEE) of the private block whose creator (group, 00xx) names `creator`
DcmElement *private_element(DcmItem *it, Uint16 group, const char *creator, Uint16 elem) {
    // one pass over the item's elements (kept sorted by tag): the creators (group, 0010-00FF)
    for (DcmObject *o = it->nextInContainer(NULL); o; o = it->nextInContainer(o)) {
        Uint16 g = o->getGTag(), el = o->getETag();
        if (g < group || (g == group && el < 0x10)) continue;
        if (g > group || el > 0xFF) break;
        OFString s;
        if (OFstatic_cast(DcmElement *, o)->getOFStringArray(s).bad() || s.find(creator) == OFString_npos) continue;
        DcmElement *e = NULL;
        if (it->findAndGetElement(DcmTagKey(group, (Uint16)((el << 8) | elem)), e).good() && e) return e;
        return NULL;
    }
    return NULL;
}

// the bytes of an OB / UN (or other byte-string) element of at most maxlen bytes (checked before
// DCMTK loads a lazily read value: a damaged length must not become a huge allocation)
bool element_bytes(DcmElement *e, const Uint8 **data, size_t *len, Uint32 maxlen) {
    Uint8 *b = NULL;
    if (e->getLength() <= maxlen && e->getUint8Array(b).good() && b) {
        *data = b;
        *len = e->getLength();
        return true;
    }
    return false;
}

DcmItem *first_item(DcmItem *parent, const DcmTagKey &seq) {
    DcmItem *it = NULL;
    if (parent && parent->findAndGetSequenceItem(seq, it, 0).good()) return it;
    return NULL;
}

// functional group values of one item of the shared or per-frame sequence
void read_groups(DcmItem *g, ml_dcm_frameinfo *fi) {
    if (!g) return;
    if (DcmItem *p = first_item(g, DCM_PlanePositionSequence))
        if (get_f64(p, DCM_ImagePositionPatient, fi->ipp, 3)) fi->has_ipp = 1;
    if (DcmItem *o = first_item(g, DCM_PlaneOrientationSequence))
        if (get_f64(o, DCM_ImageOrientationPatient, fi->iop, 6)) fi->has_iop = 1;
    if (DcmItem *m = first_item(g, DCM_PixelMeasuresSequence)) {
        if (get_f64(m, DCM_PixelSpacing, fi->ps, 2)) fi->has_ps = 1;
        if (get_f64(m, DCM_SliceThickness, &fi->thickness, 1)) fi->has_thickness = 1;
    }
    if (DcmItem *v = first_item(g, DCM_PixelValueTransformationSequence)) {
        double s = 1, i = 0;
        bool hs = get_f64(v, DCM_RescaleSlope, &s, 1), hi = get_f64(v, DCM_RescaleIntercept, &i, 1);
        if (hs || hi) {
            fi->slope = hs ? s : 1;
            fi->intercept = hi ? i : 0;
            fi->has_rescale = 1;
        }
    }
    if (DcmItem *c = first_item(g, DCM_FrameContentSequence)) {
        int32_t v;
        if (get_i32(c, DCM_TemporalPositionIndex, &v)) fi->temporal = v;
        if (get_i32(c, DCM_InStackPositionNumber, &v)) fi->stack_pos = v;
    }
}

// frame values: per-frame first, shared groups for what the frame lacks
void merge_frameinfo(ml_dcm_frameinfo *f, const ml_dcm_frameinfo *shared) {
    if (!f->has_ipp && shared->has_ipp) memcpy(f->ipp, shared->ipp, sizeof f->ipp), f->has_ipp = 1;
    if (!f->has_iop && shared->has_iop) memcpy(f->iop, shared->iop, sizeof f->iop), f->has_iop = 1;
    if (!f->has_ps && shared->has_ps) memcpy(f->ps, shared->ps, sizeof f->ps), f->has_ps = 1;
    if (!f->has_rescale && shared->has_rescale) f->slope = shared->slope, f->intercept = shared->intercept, f->has_rescale = 1;
    if (!f->has_thickness && shared->has_thickness) f->thickness = shared->thickness, f->has_thickness = 1;
    if (!f->temporal) f->temporal = shared->temporal;
    if (!f->stack_pos) f->stack_pos = shared->stack_pos;
}

int classify(E_TransferSyntax xs) {
    if (xs == EXS_Unknown) return ML_DCM_TS_UNSUPPORTED;
    DcmXfer x(xs);
    if (x.isNotEncapsulated()) return ML_DCM_TS_NATIVE;
    if (xs == EXS_JPEG2000LosslessOnly || xs == EXS_JPEG2000) return ML_DCM_TS_J2K;
    if (DcmCodecList::canChangeCoding(xs, EXS_LittleEndianExplicit)) return ML_DCM_TS_DCMTK;
    return ML_DCM_TS_UNSUPPORTED;
}

std::once_flag g_init_once;

// ---- deflated datasets (1.2.840.10008.1.2.1.99)
// DCMTK reads the values of an inflating stream at once (it cannot skip them and load them later as
// it does in a file), so a damaged length in a small deflated file became an allocation of up to
// 4 GB (found by fuzz_dicom_file). Such a dataset is inflated here into a temporary file, which
// DCMTK then reads like any file: values above kLazyBytes on demand, lengths checked against the
// file's end. The temporary file lives as long as the handle.
const char *const kDeflatedUID = "1.2.840.10008.1.2.1.99";
const uint64_t kMaxInflated = (uint64_t)8 << 30;

// Whether path is a Part 10 file (preamble, "DICM", explicit little endian group 0002) whose meta
// header names the deflated syntax; *offset: where its dataset starts.
bool deflated_dataset_offset(const char *path, long *offset) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return false;
    std::vector<unsigned char> b(65536);
    size_t n = fread(b.data(), 1, b.size(), fp);
    fclose(fp);
    if (n < 132 + 8 || memcmp(&b[128], "DICM", 4)) return false;
    size_t pos = 132;
    bool deflated = false;
    while (pos + 8 <= n) {
        unsigned g = b[pos] | (b[pos + 1] << 8), e = b[pos + 2] | (b[pos + 3] << 8);
        if (g != 0x0002) break;
        static const char *const longvrs[] = {"OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV"};
        bool longvr = false;
        for (const char *v : longvrs) longvr = longvr || (b[pos + 4] == v[0] && b[pos + 5] == v[1]);
        size_t hdr = longvr ? 12 : 8;
        if (pos + hdr > n) return false;
        uint64_t len = longvr ? ((uint64_t)b[pos + 8] | (uint64_t)b[pos + 9] << 8 | (uint64_t)b[pos + 10] << 16 |
                                 (uint64_t)b[pos + 11] << 24)
                              : (uint64_t)(b[pos + 6] | (b[pos + 7] << 8));
        if (len > n - pos - hdr) return false;
        if (e == 0x0010) {
            std::string uid((const char *)&b[pos + hdr], (size_t)len);
            while (!uid.empty() && (uid.back() == '\0' || uid.back() == ' ')) uid.pop_back();
            deflated = uid == kDeflatedUID;
        }
        pos += hdr + (size_t)len;
    }
    *offset = (long)pos;
    return deflated;
}

// Inflate path's dataset (raw deflate from offset) into a new temporary file named in *tmp.
bool inflate_to_temp(const char *path, long offset, std::string *tmp, char *err, size_t errlen) {
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    std::string name = std::string(dir) + "/medlua_inflated_XXXXXX";
    std::vector<char> nb(name.begin(), name.end());
    nb.push_back('\0');
    int fd = mkstemp(nb.data());
    if (fd < 0) {
        seterr(err, errlen, "deflated dataset: cannot create a temporary file in %s: %s", dir, strerror(errno));
        return false;
    }
    *tmp = nb.data();
    FILE *in = fopen(path, "rb");
    const char *why = NULL;
    bool ok = in && fseek(in, offset, SEEK_SET) == 0;
    if (!ok) why = "cannot re-open the file";
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    bool zinit = ok && inflateInit2(&zs, -MAX_WBITS) == Z_OK;
    if (ok && !zinit) ok = false, why = "zlib cannot start";
    std::vector<unsigned char> ib(1 << 16), ob(1 << 18);
    uint64_t total = 0;
    int zr = Z_OK;
    while (ok && zr != Z_STREAM_END) {
        size_t got = fread(ib.data(), 1, ib.size(), in);
        if (got == 0) break; // the stream ends without its end marker: DCMTK judges what was inflated
        zs.next_in = ib.data();
        zs.avail_in = (uInt)got;
        do {
            zs.next_out = ob.data();
            zs.avail_out = (uInt)ob.size();
            zr = inflate(&zs, Z_NO_FLUSH);
            if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) {
                ok = false;
                why = zs.msg ? zs.msg : "inflate failed";
                break;
            }
            size_t nout = ob.size() - zs.avail_out;
            total += nout;
            if (total > kMaxInflated) {
                ok = false;
                why = "it inflates to more than 8 GiB";
                break;
            }
            if (nout && write(fd, ob.data(), nout) != (ssize_t)nout) {
                ok = false;
                why = strerror(errno);
                break;
            }
        } while (zs.avail_out == 0 && zr != Z_STREAM_END);
        if (zr == Z_BUF_ERROR && zs.avail_in == 0) zr = Z_OK; // needs more input
    }
    if (zinit) inflateEnd(&zs);
    if (in) fclose(in);
    if (close(fd) != 0 && ok) ok = false, why = strerror(errno);
    if (!ok) {
        seterr(err, errlen, "deflated dataset corrupt: %s", why ? why : "cannot inflate");
        unlink(tmp->c_str());
        tmp->clear();
    }
    return ok;
}

} // namespace

extern "C" {

void ml_dcm_global_init(void) {
    std::call_once(g_init_once, [] {
        try {
            if (!getenv("MEDLUA_DCMTK_LOG")) OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
            // attributes stored with VR UN (explicit VR files written by tools that did not know
            // the tag) are read with their dictionary VR, as pydicom does
            dcmEnableUnknownVRConversion.set(OFTrue);
            DJDecoderRegistration::registerCodecs();
            DJLSDecoderRegistration::registerCodecs();
            DcmRLEDecoderRegistration::registerCodecs();
        } catch (...) {
        }
    });
}

int ml_dcm_ts_classify(const char *uid, char *name, size_t namelen) {
    try {
        ml_dcm_global_init();
        E_TransferSyntax xs = (!uid || !*uid) ? EXS_LittleEndianImplicit : DcmXfer(uid).getXfer();
        if (name && namelen) {
            if (xs == EXS_Unknown) snprintf(name, namelen, "unknown transfer syntax");
            else snprintf(name, namelen, "%s", DcmXfer(xs).getXferName());
        }
        return classify(xs);
    } catch (...) {
        if (name && namelen) name[0] = '\0';
        return ML_DCM_TS_UNSUPPORTED;
    }
}

int ml_dcm_open(const char *path, ml_dcm_file **out, char *err, size_t errlen) {
    *out = NULL;
    try {
        ml_dcm_global_init();
        if (!dcmDataDict.isDictionaryLoaded()) {
            seterr(err, errlen, "DCMTK's data dictionary is not loaded (install libdcmtk17 or set DCMDICTPATH)");
            return ML_DCM_EIO;
        }
        long dsoff = 0;
        if (deflated_dataset_offset(path, &dsoff)) {
            ml_dcm_file *f = new ml_dcm_file;
            if (!inflate_to_temp(path, dsoff, &f->inflated, err, errlen)) {
                delete f;
                return ML_DCM_EIO;
            }
            OFCondition c = f->ff.loadFile(f->inflated.c_str(), EXS_LittleEndianExplicit, EGL_noChange, kLazyBytes,
                                           ERM_dataset);
            DcmMetaInfo meta;
            OFCondition cm = c.good() ? meta.loadFile(path) : c;
            if (c.bad() || cm.bad()) {
                seterr(err, errlen, "%s", c.bad() ? c.text() : cm.text());
                delete f;
                return ML_DCM_EIO;
            }
            // the file's own meta header (it names the deflated syntax) over the inflated dataset
            DcmMetaInfo *mi = f->ff.getMetaInfo();
            for (DcmObject *o = meta.nextInContainer(NULL); o && mi; o = meta.nextInContainer(o))
                mi->insert(OFstatic_cast(DcmElement *, o->clone()), OFTrue);
            *out = f;
            return ML_DCM_OK;
        }
        ml_dcm_file *f = new ml_dcm_file;
        OFCondition c = f->ff.loadFile(path, EXS_Unknown, EGL_noChange, kLazyBytes, ERM_autoDetect);
        if (c.bad()) {
            // a dataset without meta header whose encoding DCMTK's guess got wrong: try both
            // little endian encodings explicitly before giving up
            OFCondition first = c;
            const E_TransferSyntax tries[2] = {EXS_LittleEndianExplicit, EXS_LittleEndianImplicit};
            for (int k = 0; k < 2 && c.bad(); k++) {
                delete f;
                f = new ml_dcm_file;
                c = f->ff.loadFile(path, tries[k], EGL_noChange, kLazyBytes, ERM_dataset);
                if (c.good() && !f->ff.getDataset()->tagExists(DCM_Rows)) c = first;
            }
            if (c.bad()) {
                seterr(err, errlen, "%s", first.text());
                delete f;
                return ML_DCM_EIO;
            }
        }
        *out = f;
        return ML_DCM_OK;
    } catch (const std::bad_alloc &) {
        seterr(err, errlen, "out of memory while parsing");
        return ML_DCM_EOOM;
    } catch (...) {
        seterr(err, errlen, "DCMTK raised an exception while parsing");
        return ML_DCM_EIO;
    }
}

void ml_dcm_close(ml_dcm_file *f) {
    try {
        delete f;
    } catch (...) {
    }
}

void ml_dcm_header_free(ml_dcm_header *h) {
    if (!h) return;
    free(h->frameinfo);
    h->frameinfo = NULL;
    h->nframeinfo = 0;
    free(h->grid_offsets);
    h->grid_offsets = NULL;
    h->ngrid_offsets = 0;
    free(h->csa_image);
    h->csa_image = NULL;
    h->csa_image_len = 0;
}

int ml_dcm_read_header(ml_dcm_file *f, ml_dcm_header *h, char *err, size_t errlen) {
    memset(h, 0, sizeof *h);
    h->slope = 1;
    try {
        DcmDataset *ds = f->ff.getDataset();
        DcmMetaInfo *mi = f->ff.getMetaInfo();
        if (!ds) {
            seterr(err, errlen, "no dataset");
            return ML_DCM_EIO;
        }
        E_TransferSyntax xs = ds->getOriginalXfer();
        if (mi) get_str(mi, DCM_TransferSyntaxUID, h->transfer_syntax, sizeof h->transfer_syntax);
        if (!h->transfer_syntax[0] && xs != EXS_Unknown) copystr(h->transfer_syntax, sizeof h->transfer_syntax, DcmXfer(xs).getXferID());
        /* the meta header names the syntax; DCMTK's detected one decides how the dataset was read */
        if (h->transfer_syntax[0]) {
            E_TransferSyntax named = DcmXfer(h->transfer_syntax).getXfer();
            if (named == EXS_Unknown) xs = EXS_Unknown;
        }
        h->ts_class = classify(xs);
        if (xs == EXS_Unknown) snprintf(h->ts_name, sizeof h->ts_name, "unknown transfer syntax");
        else if (!f->inflated.empty())
            copystr(h->ts_name, sizeof h->ts_name, DcmXfer(EXS_DeflatedLittleEndianExplicit).getXferName());
        else copystr(h->ts_name, sizeof h->ts_name, DcmXfer(xs).getXferName());

        get_str(ds, DCM_SOPClassUID, h->sop_class, sizeof h->sop_class);
        get_str(ds, DCM_SOPInstanceUID, h->sop_instance, sizeof h->sop_instance);
        get_str(ds, DCM_SeriesInstanceUID, h->series_uid, sizeof h->series_uid);
        get_str(ds, DCM_StudyInstanceUID, h->study_uid, sizeof h->study_uid);
        get_str(ds, DCM_FrameOfReferenceUID, h->for_uid, sizeof h->for_uid);
        get_str(ds, DCM_Modality, h->modality, sizeof h->modality);
        get_str(ds, DCM_PatientID, h->patient_id, sizeof h->patient_id);
        get_str(ds, DCM_SeriesDescription, h->description, sizeof h->description);
        get_str(ds, DCM_PhotometricInterpretation, h->photometric, sizeof h->photometric);
        h->has_series_number = get_i32(ds, DCM_SeriesNumber, &h->series_number);
        h->has_instance = get_i32(ds, DCM_InstanceNumber, &h->instance);
        h->has_temporal = get_i32(ds, DCM_TemporalPositionIdentifier, &h->temporal);
        get_i32(ds, DCM_AcquisitionNumber, &h->acquisition);

        h->has_rows = get_u16(ds, DCM_Rows, &h->rows);
        h->has_cols = get_u16(ds, DCM_Columns, &h->cols);
        h->frames = 1;
        int32_t nf;
        if (get_i32(ds, DCM_NumberOfFrames, &nf)) h->frames = nf;
        if (!get_u16(ds, DCM_BitsAllocated, &h->bits_alloc)) h->bits_alloc = 0;
        if (!get_u16(ds, DCM_BitsStored, &h->bits_stored)) h->bits_stored = h->bits_alloc;
        if (!get_u16(ds, DCM_HighBit, &h->high_bit)) h->high_bit = h->bits_stored - 1;
        if (!get_u16(ds, DCM_PixelRepresentation, &h->pixel_rep)) h->pixel_rep = 0;
        if (!get_u16(ds, DCM_SamplesPerPixel, &h->samples)) h->samples = 1;

        DcmElement *pe = NULL;
        if (ds->findAndGetElement(DCM_PixelData, pe).good() && pe) {
            h->has_pixel_data = 1;
            DcmPixelData *pd = OFstatic_cast(DcmPixelData *, pe);
            E_TransferSyntax rep;
            const DcmRepresentationParameter *param = NULL;
            pd->getOriginalRepresentationKey(rep, param);
            DcmXfer rx(rep);
            h->encapsulated = rx.isEncapsulated() ? 1 : 0;
            if (!h->encapsulated) h->pixel_length = pe->getLengthField();
        } else if (ds->tagExists(DCM_FloatPixelData) || ds->tagExists(DCM_DoubleFloatPixelData)) {
            h->has_pixel_data = 0; // handled as "no integer pixel data" by the caller
        }

        h->has_ipp = get_f64(ds, DCM_ImagePositionPatient, h->ipp, 3);
        h->has_iop = get_f64(ds, DCM_ImageOrientationPatient, h->iop, 6);
        h->has_ps = get_f64(ds, DCM_PixelSpacing, h->ps, 2);
        if (!h->has_ps && get_f64(ds, DCM_ImagerPixelSpacing, h->ps, 2)) h->has_ps = h->ps_from_imager = 1;
        double s = 1, i = 0;
        bool hs = get_f64(ds, DCM_RescaleSlope, &s, 1), hi = get_f64(ds, DCM_RescaleIntercept, &i, 1);
        if (hs || hi) {
            h->slope = hs ? s : 1;
            h->intercept = hi ? i : 0;
            h->has_rescale = 1;
        }
        h->has_thickness = get_f64(ds, DCM_SliceThickness, &h->thickness, 1);
        h->has_spacing_between = get_f64(ds, DCM_SpacingBetweenSlices, &h->spacing_between, 1);
        get_f64(ds, DCM_GantryDetectorTilt, &h->gantry_tilt, 1);
        {
            DcmElement *g = NULL;
            if (ds->findAndGetElement(DCM_GridFrameOffsetVector, g).good() && g && g->getVM() > 0) {
                unsigned long vm = g->getVM();
                h->grid_offsets = (double *)calloc(vm, sizeof(double));
                if (h->grid_offsets) {
                    h->ngrid_offsets = (int32_t)vm;
                    for (unsigned long k = 0; k < vm; k++) {
                        Float64 x;
                        if (g->getFloat64(x, k).bad() || !std::isfinite(x)) {
                            free(h->grid_offsets), h->grid_offsets = NULL, h->ngrid_offsets = 0;
                            break;
                        }
                        h->grid_offsets[k] = x;
                    }
                }
            }
        }
        h->has_window = get_f64(ds, DCM_WindowCenter, &h->window_center, 1) &&
                        get_f64(ds, DCM_WindowWidth, &h->window_width, 1);

        // Siemens mosaic clues
        {
            OFString it;
            if (ds->findAndGetOFStringArray(DCM_ImageType, it).good()) copystr(h->image_type, sizeof h->image_type, it);
            get_str(ds, DCM_Manufacturer, h->manufacturer, sizeof h->manufacturer);
            h->has_acq_matrix = 1;
            for (unsigned long k = 0; k < 4 && h->has_acq_matrix; k++) {
                Uint16 v;
                if (ds->findAndGetUint16(DCM_AcquisitionMatrix, v, k).good()) h->acq_matrix[k] = v;
                else h->has_acq_matrix = 0;
            }
            if (DcmElement *e = private_element(ds, 0x0019, "SIEMENS MR HEADER", 0x0A)) {
                Uint16 v;
                const Uint8 *b = NULL;
                size_t n = 0;
                if (e->getUint16(v).good()) h->siemens_mosaic_n = v;
                else if (element_bytes(e, &b, &n, 64) && n >= 2) h->siemens_mosaic_n = b[0] | (b[1] << 8);
            }
            if (DcmElement *e = private_element(ds, 0x0029, "SIEMENS CSA HEADER", 0x10)) {
                const Uint8 *b = NULL;
                size_t n = 0;
                if (element_bytes(e, &b, &n, 16u << 20) && n > 0) {
                    h->csa_image = (uint8_t *)malloc(n);
                    if (h->csa_image) memcpy(h->csa_image, b, n), h->csa_image_len = n;
                }
            }
        }

        // enhanced multi-frame: shared + per-frame functional groups
        ml_dcm_frameinfo shared;
        memset(&shared, 0, sizeof shared);
        if (DcmItem *sh = first_item(ds, DCM_SharedFunctionalGroupsSequence)) read_groups(sh, &shared);
        DcmSequenceOfItems *pf = NULL;
        if (ds->findAndGetSequence(DCM_PerFrameFunctionalGroupsSequence, pf).good() && pf && pf->card() > 0) {
            unsigned long n = pf->card();
            h->frameinfo = (ml_dcm_frameinfo *)calloc(n, sizeof(ml_dcm_frameinfo));
            if (!h->frameinfo) {
                seterr(err, errlen, "out of memory (%lu per-frame items)", n);
                return ML_DCM_EOOM;
            }
            h->nframeinfo = (int32_t)n;
            unsigned long k = 0;
            for (DcmObject *o = pf->nextInContainer(NULL); o && k < n; o = pf->nextInContainer(o), k++) {
                h->frameinfo[k].slope = 1;
                read_groups(OFstatic_cast(DcmItem *, o), &h->frameinfo[k]);
                merge_frameinfo(&h->frameinfo[k], &shared);
            }
        } else {
            // shared groups only (or none): fold them into the classic values
            if (!h->has_ipp && shared.has_ipp) memcpy(h->ipp, shared.ipp, sizeof h->ipp), h->has_ipp = 1;
            if (!h->has_iop && shared.has_iop) memcpy(h->iop, shared.iop, sizeof h->iop), h->has_iop = 1;
            if (!h->has_ps && shared.has_ps) memcpy(h->ps, shared.ps, sizeof h->ps), h->has_ps = 1;
            if (!h->has_rescale && shared.has_rescale)
                h->slope = shared.slope, h->intercept = shared.intercept, h->has_rescale = 1;
            if (!h->has_thickness && shared.has_thickness) h->thickness = shared.thickness, h->has_thickness = 1;
        }
        if (!h->has_iop && shared.has_iop) memcpy(h->iop, shared.iop, sizeof h->iop), h->has_iop = 1;
        if (!h->has_ps && shared.has_ps) memcpy(h->ps, shared.ps, sizeof h->ps), h->has_ps = 1;
        if (!h->has_rescale && shared.has_rescale)
            h->slope = shared.slope, h->intercept = shared.intercept, h->has_rescale = 1;
        if (!h->has_thickness && shared.has_thickness) h->thickness = shared.thickness, h->has_thickness = 1;
        if (!h->has_window) {
            DcmItem *sh = first_item(ds, DCM_SharedFunctionalGroupsSequence);
            if (DcmItem *w = first_item(sh, DCM_FrameVOILUTSequence))
                h->has_window = get_f64(w, DCM_WindowCenter, &h->window_center, 1) &&
                                get_f64(w, DCM_WindowWidth, &h->window_width, 1);
        }
        return ML_DCM_OK;
    } catch (const std::bad_alloc &) {
        ml_dcm_header_free(h);
        seterr(err, errlen, "out of memory while reading the header");
        return ML_DCM_EOOM;
    } catch (...) {
        ml_dcm_header_free(h);
        seterr(err, errlen, "DCMTK raised an exception while reading the header");
        return ML_DCM_EIO;
    }
}

int ml_dcm_frame_pixels(ml_dcm_file *f, uint32_t frame, void *buf, size_t bufsize, uint32_t *start_fragment,
                        char *err, size_t errlen) {
    try {
        DcmDataset *ds = f->ff.getDataset();
        DcmElement *pe = NULL;
        if (!ds || ds->findAndGetElement(DCM_PixelData, pe).bad() || !pe) {
            seterr(err, errlen, "no PixelData");
            return ML_DCM_EIO;
        }
        if (bufsize > 0xFFFFFFFEu) {
            seterr(err, errlen, "frame too large (%zu bytes)", bufsize);
            return ML_DCM_EUNSUPPORTED;
        }
        DcmPixelData *pd = OFstatic_cast(DcmPixelData *, pe);
        OFString model;
        Uint32 sf = start_fragment ? *start_fragment : 0;
        OFCondition c = pd->getUncompressedFrame(ds, frame, sf, buf, (Uint32)bufsize, model, NULL);
        if (c.bad()) {
            if (c == EC_TooManyBytesRequested || c == EC_InvalidOffset)
                seterr(err, errlen, "pixel data ends before frame %u (%s)", (unsigned)frame, c.text());
            else
                seterr(err, errlen, "cannot decode frame %u: %s", (unsigned)frame, c.text());
            return ML_DCM_EIO;
        }
        if (start_fragment) *start_fragment = sf;
        // 32-bit samples of an OW value in a big endian file: DCMTK swapped 16-bit words, so the
        // two halves of each sample are still in big endian order
        Uint16 ba = 0;
        if (ds->findAndGetUint16(DCM_BitsAllocated, ba).good() && ba == 32 && pe->getVR() == EVR_OW &&
            DcmXfer(ds->getOriginalXfer()).getByteOrder() == EBO_BigEndian && gLocalByteOrder == EBO_LittleEndian) {
            Uint16 *w = (Uint16 *)buf;
            for (size_t k = 0; k + 1 < bufsize / 2; k += 2) {
                Uint16 t = w[k];
                w[k] = w[k + 1];
                w[k + 1] = t;
            }
        }
        return ML_DCM_OK;
    } catch (const std::bad_alloc &) {
        seterr(err, errlen, "out of memory while decoding frame %u", (unsigned)frame);
        return ML_DCM_EOOM;
    } catch (...) {
        seterr(err, errlen, "DCMTK raised an exception while decoding frame %u", (unsigned)frame);
        return ML_DCM_EIO;
    }
}

int ml_dcm_frame_bitstream(ml_dcm_file *f, uint32_t frame, uint32_t nframes, uint8_t **data, size_t *len,
                           char *err, size_t errlen) {
    *data = NULL;
    *len = 0;
    try {
        DcmDataset *ds = f->ff.getDataset();
        DcmElement *pe = NULL;
        if (!ds || ds->findAndGetElement(DCM_PixelData, pe).bad() || !pe) {
            seterr(err, errlen, "no PixelData");
            return ML_DCM_EIO;
        }
        DcmPixelData *pd = OFstatic_cast(DcmPixelData *, pe);
        E_TransferSyntax rep;
        const DcmRepresentationParameter *param = NULL;
        pd->getOriginalRepresentationKey(rep, param);
        DcmPixelSequence *seq = NULL;
        if (pd->getEncapsulatedRepresentation(rep, param, seq).bad() || !seq) {
            seterr(err, errlen, "PixelData is not encapsulated");
            return ML_DCM_EIO;
        }
        unsigned long nitems = seq->card();
        if (nitems < 2) {
            seterr(err, errlen, "encapsulated PixelData has no fragments");
            return ML_DCM_EIO;
        }
        // fragment lengths and the frame -> fragment range map
        std::vector<Uint32> flen(nitems - 1);
        std::vector<DcmPixelItem *> items(nitems);
        for (unsigned long i = 0; i < nitems; i++) {
            if (seq->getItem(items[i], i).bad() || !items[i]) {
                seterr(err, errlen, "cannot access fragment %lu", i);
                return ML_DCM_EIO;
            }
            if (i) flen[i - 1] = items[i]->getLength();
        }
        unsigned long nfrag = nitems - 1, first = 0, last = 0; // [first, last) fragment indices
        // Basic Offset Table
        std::vector<Uint32> bot;
        Uint32 botlen = items[0]->getLength();
        if (botlen >= 4 && botlen % 4 == 0) {
            Uint8 *b = NULL;
            if (items[0]->getUint8Array(b).good() && b) {
                bot.resize(botlen / 4);
                for (size_t k = 0; k < bot.size(); k++)
                    bot[k] = (Uint32)b[4 * k] | ((Uint32)b[4 * k + 1] << 8) | ((Uint32)b[4 * k + 2] << 16) |
                             ((Uint32)b[4 * k + 3] << 24);
            }
        }
        if (nframes <= 1) {
            first = 0;
            last = nfrag;
        } else if (bot.size() == nframes) {
            // offsets are measured from the first fragment's item tag: 8 header bytes per item
            std::vector<uint64_t> start(nfrag);
            uint64_t off = 0;
            for (unsigned long i = 0; i < nfrag; i++) start[i] = off, off += 8ull + flen[i];
            uint64_t want = bot[frame], want_next = frame + 1 < nframes ? bot[frame + 1] : off;
            unsigned long i = 0;
            while (i < nfrag && start[i] < want) i++;
            if (i >= nfrag || start[i] != want) {
                seterr(err, errlen, "Basic Offset Table entry %u (%u) does not point at a fragment", (unsigned)frame,
                       (unsigned)bot[frame]);
                return ML_DCM_EIO;
            }
            first = i;
            while (i < nfrag && start[i] < want_next) i++;
            last = i;
        } else if (nfrag == nframes) {
            first = frame;
            last = frame + 1;
        } else {
            // no usable offset table: a frame starts at each fragment that begins with a JPEG 2000
            // codestream (SOC marker FF4F) or a JP2 signature box
            std::vector<unsigned long> starts;
            for (unsigned long i = 0; i < nfrag; i++) {
                Uint8 *b = NULL;
                if (flen[i] >= 4 && items[i + 1]->getUint8Array(b).good() && b &&
                    ((b[0] == 0xFF && b[1] == 0x4F) || (b[0] == 0 && b[1] == 0 && b[2] == 0 && b[3] == 0x0C)))
                    starts.push_back(i);
            }
            if (starts.size() != nframes) {
                seterr(err, errlen, "cannot split %lu fragments into %u frames (found %zu codestream starts)", nfrag,
                       (unsigned)nframes, starts.size());
                return ML_DCM_EIO;
            }
            first = starts[frame];
            last = frame + 1 < nframes ? starts[frame + 1] : nfrag;
        }
        if (first >= last || last > nfrag) {
            seterr(err, errlen, "frame %u has no fragments", (unsigned)frame);
            return ML_DCM_EIO;
        }
        size_t total = 0;
        for (unsigned long i = first; i < last; i++) total += flen[i];
        uint8_t *out = (uint8_t *)malloc(total ? total : 1);
        if (!out) {
            seterr(err, errlen, "out of memory (%zu bytes of compressed data)", total);
            return ML_DCM_EOOM;
        }
        size_t pos = 0;
        for (unsigned long i = first; i < last; i++) {
            if (!flen[i]) continue;
            Uint8 *b = NULL;
            OFCondition c = items[i + 1]->getUint8Array(b);
            if (c.bad() || !b) {
                free(out);
                seterr(err, errlen, "cannot read fragment %lu: %s", i, c.bad() ? c.text() : "no data");
                return ML_DCM_EIO;
            }
            memcpy(out + pos, b, flen[i]);
            pos += flen[i];
            items[i + 1]->compact(); // drop the loaded copy; the file still has it
        }
        *data = out;
        *len = total;
        return ML_DCM_OK;
    } catch (const std::bad_alloc &) {
        seterr(err, errlen, "out of memory while reading compressed frame %u", (unsigned)frame);
        return ML_DCM_EOOM;
    } catch (...) {
        seterr(err, errlen, "DCMTK raised an exception while reading compressed frame %u", (unsigned)frame);
        return ML_DCM_EIO;
    }
}

void ml_dcm_new_uid(char out[72]) {
    char buf[100];
    buf[0] = '\0';
    try {
        dcmGenerateUniqueIdentifier(buf, SITE_INSTANCE_UID_ROOT);
    } catch (...) {
    }
    size_t n = strlen(buf);
    if (n > 64) n = 64;
    memcpy(out, buf, n);
    out[n] = '\0';
}

// ------------------------------------------------------------------------------- writing
} // extern "C"

namespace {

// a DS value: at most 16 characters, as precise as fits
std::string ds_str(double v) {
    char b[40];
    if (v == 0 || !std::isfinite(v)) return "0";
    for (int prec = 15; prec >= 1; prec--) {
        snprintf(b, sizeof b, "%.*g", prec, v);
        if (strlen(b) <= 16) return b;
    }
    snprintf(b, sizeof b, "%.6e", v);
    return b;
}

std::string ds_multi(const double *v, int n) {
    std::string s;
    for (int i = 0; i < n; i++) {
        if (i) s += '\\';
        s += ds_str(v[i]);
    }
    return s;
}

#define PUT(tag, val)                                                                                         \
    do {                                                                                                      \
        OFCondition c_ = ds->putAndInsertString(tag, (val));                                                  \
        if (c_.bad()) {                                                                                       \
            seterr(err, errlen, "cannot set %s: %s", DcmTag(tag).getTagName(), c_.text());                    \
            return ML_DCM_EIO;                                                                                \
        }                                                                                                     \
    } while (0)

} // namespace

extern "C" {

int ml_dcm_write_slice(const char *path, const ml_dcm_wslice *s, const int16_t *pixels, char *err, size_t errlen) {
    try {
        ml_dcm_global_init();
        DcmFileFormat ff;
        DcmDataset *ds = ff.getDataset();
        char num[32];
        PUT(DCM_SpecificCharacterSet, "ISO_IR 192");
        PUT(DCM_ImageType, s->image_type && *s->image_type ? s->image_type : "DERIVED\\SECONDARY\\AXIAL");
        PUT(DCM_SOPClassUID, s->sop_class);
        PUT(DCM_SOPInstanceUID, s->sop_instance);
        PUT(DCM_StudyDate, s->study_date);
        PUT(DCM_StudyTime, s->study_time);
        PUT(DCM_AccessionNumber, "");
        PUT(DCM_Modality, s->modality);
        PUT(DCM_Manufacturer, "medlua");
        PUT(DCM_ReferringPhysicianName, "");
        if (s->study_description && *s->study_description) PUT(DCM_StudyDescription, s->study_description);
        PUT(DCM_SeriesDescription, s->series_description);
        PUT(DCM_PatientName, s->patient_name);
        PUT(DCM_PatientID, s->patient_id);
        PUT(DCM_PatientBirthDate, "");
        PUT(DCM_PatientSex, "");
        if (s->is_ct) PUT(DCM_KVP, "");
        else PUT(DCM_ConversionType, "WSD");
        snprintf(num, sizeof num, "%s", ds_str(s->thickness).c_str());
        PUT(DCM_SliceThickness, num);
        PUT(DCM_SpacingBetweenSlices, ds_str(s->spacing_between).c_str());
        PUT(DCM_StudyInstanceUID, s->study_uid);
        PUT(DCM_SeriesInstanceUID, s->series_uid);
        PUT(DCM_StudyID, s->study_id);
        snprintf(num, sizeof num, "%d", (int)s->series_number);
        PUT(DCM_SeriesNumber, num);
        PUT(DCM_AcquisitionNumber, "1");
        snprintf(num, sizeof num, "%d", (int)s->instance);
        PUT(DCM_InstanceNumber, num);
        PUT(DCM_ImagePositionPatient, ds_multi(s->ipp, 3).c_str());
        PUT(DCM_ImageOrientationPatient, ds_multi(s->iop, 6).c_str());
        PUT(DCM_FrameOfReferenceUID, s->for_uid);
        PUT(DCM_PositionReferenceIndicator, "");
        if (s->temporal > 0) {
            snprintf(num, sizeof num, "%d", (int)s->temporal);
            PUT(DCM_TemporalPositionIdentifier, num);
        }
        PUT(DCM_SliceLocation, ds_str(s->slice_location).c_str());
        ds->putAndInsertUint16(DCM_SamplesPerPixel, 1);
        PUT(DCM_PhotometricInterpretation, "MONOCHROME2");
        ds->putAndInsertUint16(DCM_Rows, (Uint16)s->rows);
        ds->putAndInsertUint16(DCM_Columns, (Uint16)s->cols);
        PUT(DCM_PixelSpacing, ds_multi(s->ps, 2).c_str());
        ds->putAndInsertUint16(DCM_BitsAllocated, 16);
        ds->putAndInsertUint16(DCM_BitsStored, 16);
        ds->putAndInsertUint16(DCM_HighBit, 15);
        ds->putAndInsertUint16(DCM_PixelRepresentation, 1);
        if (s->has_window) {
            PUT(DCM_WindowCenter, ds_str(s->window_center).c_str());
            PUT(DCM_WindowWidth, ds_str(s->window_width).c_str());
        }
        PUT(DCM_RescaleIntercept, ds_str(s->intercept).c_str());
        PUT(DCM_RescaleSlope, ds_str(s->slope).c_str());
        PUT(DCM_RescaleType, s->is_ct ? "HU" : "US");
        size_t n = (size_t)s->rows * (size_t)s->cols;
        OFCondition c = ds->putAndInsertUint16Array(DCM_PixelData, (const Uint16 *)pixels, (unsigned long)n);
        if (c.bad()) {
            seterr(err, errlen, "cannot set PixelData: %s", c.text());
            return ML_DCM_EIO;
        }
        c = ff.saveFile(path, EXS_LittleEndianExplicit, EET_ExplicitLength, EGL_recalcGL, EPD_noChange, 0, 0,
                        EWM_fileformat);
        if (c.bad()) {
            seterr(err, errlen, "cannot write: %s", c.text());
            return ML_DCM_EIO;
        }
        return ML_DCM_OK;
    } catch (const std::bad_alloc &) {
        seterr(err, errlen, "out of memory while writing");
        return ML_DCM_EOOM;
    } catch (...) {
        seterr(err, errlen, "DCMTK raised an exception while writing");
        return ML_DCM_EIO;
    }
}

// ------------------------------------------------------------------------------- editing
} // extern "C"

namespace {

bool parse_hex4(const char *p, Uint16 *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return false;
        v = v * 16 + (unsigned)d;
    }
    *out = (Uint16)v;
    return true;
}

// "(0018,1110)", "0018,1110", "00181110" or a dictionary keyword
bool resolve_tag(const char *key, DcmTag &tag) {
    const char *p = key;
    size_t n = strlen(key);
    Uint16 g, e;
    if (n == 11 && p[0] == '(' && p[5] == ',' && p[10] == ')' && parse_hex4(p + 1, &g) && parse_hex4(p + 6, &e)) {
        tag = DcmTag(g, e);
        return true;
    }
    if (n == 9 && p[4] == ',' && parse_hex4(p, &g) && parse_hex4(p + 5, &e)) {
        tag = DcmTag(g, e);
        return true;
    }
    if (n == 8 && parse_hex4(p, &g) && parse_hex4(p + 4, &e)) {
        tag = DcmTag(g, e);
        return true;
    }
    return DcmTag::findTagFromName(key, tag).good();
}

} // namespace

extern "C" {

int ml_dcm_edit(const char *in_path, const char *out_path, int n, const char *const *keys, const char *const *values,
                char *err, size_t errlen) {
    try {
        ml_dcm_global_init();
        // resolve every key before touching anything
        std::vector<DcmTag> tags((size_t)(n > 0 ? n : 0));
        for (int i = 0; i < n; i++) {
            if (!resolve_tag(keys[i], tags[i])) {
                seterr(err, errlen, "unknown tag '%s' (use a DICOM keyword such as DistanceSourceToDetector, or "
                                    "\"(gggg,eeee)\")",
                       keys[i]);
                return ML_DCM_EARG;
            }
            if (tags[i].getGroup() == 0x0002) {
                seterr(err, errlen, "tag %s (%s) is in the file meta header, which is rebuilt on write; not editable",
                       keys[i], tags[i].toString().c_str());
                return ML_DCM_EARG;
            }
            if (tags[i].getGroup() == 0x7FE0 || tags[i] == DCM_PixelData) {
                seterr(err, errlen, "tag %s is pixel data; edit_dicom_tags keeps pixel data untouched", keys[i]);
                return ML_DCM_EARG;
            }
            if (tags[i].getEVR() == EVR_SQ) {
                seterr(err, errlen, "tag %s (%s) is a sequence; only plain values can be edited", keys[i],
                       tags[i].toString().c_str());
                return ML_DCM_EARG;
            }
        }
        DcmFileFormat ff;
        OFCondition c = ff.loadFile(in_path, EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_autoDetect);
        if (c.bad()) {
            seterr(err, errlen, "cannot read: %s", c.text());
            return ML_DCM_EIO;
        }
        DcmDataset *ds = ff.getDataset();
        c = ff.loadAllDataIntoMemory();
        if (c.bad()) {
            seterr(err, errlen, "cannot read: %s", c.text());
            return ML_DCM_EIO;
        }
        E_TransferSyntax xs = ds->getOriginalXfer();
        for (int i = 0; i < n; i++) {
            if (!values[i]) {
                ds->findAndDeleteElement(tags[i], OFFalse, OFFalse);
                continue;
            }
            if (tags[i].getEVR() == EVR_UNKNOWN || tags[i].getEVR() == EVR_UN) {
                seterr(err, errlen, "tag %s (%s) has no known VR (private or unknown tag); cannot set a value",
                       keys[i], tags[i].toString().c_str());
                return ML_DCM_EARG;
            }
            c = ds->putAndInsertString(tags[i], values[i], OFTrue);
            if (c.bad()) {
                seterr(err, errlen, "cannot set %s (%s) to \"%s\": %s", keys[i], tags[i].toString().c_str(), values[i],
                       c.text());
                return ML_DCM_EARG;
            }
            DcmElement *el = NULL;
            if (ds->findAndGetElement(tags[i], el).good() && el) {
                OFCondition v = el->checkValue("1-n", OFTrue);
                if (v.bad()) {
                    seterr(err, errlen, "value \"%s\" is not valid for %s (%s, VR %s): %s", values[i], keys[i],
                           tags[i].toString().c_str(), tags[i].getVRName(), v.text());
                    return ML_DCM_EARG;
                }
            }
        }
        c = ff.saveFile(out_path, xs == EXS_Unknown ? EXS_LittleEndianImplicit : xs, EET_ExplicitLength,
                        EGL_recalcGL, EPD_noChange, 0, 0, EWM_updateMeta);
        if (c.bad()) {
            seterr(err, errlen, "cannot write: %s", c.text());
            return ML_DCM_EIO;
        }
        return ML_DCM_OK;
    } catch (const std::bad_alloc &) {
        seterr(err, errlen, "out of memory while editing");
        return ML_DCM_EOOM;
    } catch (...) {
        seterr(err, errlen, "DCMTK raised an exception while editing");
        return ML_DCM_EIO;
    }
}

int ml_dcm_get_tags(const char *path, int n, const char *const *keys, char **values, char *err, size_t errlen) {
    for (int i = 0; i < n; i++) values[i] = NULL;
    try {
        ml_dcm_global_init();
        std::vector<DcmTag> tags((size_t)(n > 0 ? n : 0));
        for (int i = 0; i < n; i++)
            if (!resolve_tag(keys[i], tags[i])) {
                seterr(err, errlen, "unknown tag '%s' (use a DICOM keyword or \"(gggg,eeee)\")", keys[i]);
                return ML_DCM_EARG;
            }
        DcmFileFormat ff;
        OFCondition c = ff.loadFile(path, EXS_Unknown, EGL_noChange, kLazyBytes, ERM_autoDetect);
        if (c.bad()) {
            seterr(err, errlen, "cannot read: %s", c.text());
            return ML_DCM_EIO;
        }
        for (int i = 0; i < n; i++) {
            DcmItem *where = tags[i].getGroup() == 0x0002 ? (DcmItem *)ff.getMetaInfo() : (DcmItem *)ff.getDataset();
            OFString s;
            if (where && where->findAndGetOFStringArray(tags[i], s).good()) {
                values[i] = strdup(s.c_str());
                if (!values[i]) {
                    for (int k = 0; k < i; k++) free(values[k]), values[k] = NULL;
                    seterr(err, errlen, "out of memory");
                    return ML_DCM_EOOM;
                }
            }
        }
        return ML_DCM_OK;
    } catch (...) {
        for (int k = 0; k < n; k++) free(values[k]), values[k] = NULL;
        seterr(err, errlen, "DCMTK raised an exception while reading tags");
        return ML_DCM_EIO;
    }
}

} // extern "C"
