/* Marching cubes on voxel masks, in world millimetres (ml_mesh.h).
 *
 * Pipeline (ml_mesh_from_volume): bounding box of the mask -> crop (plus the smoothing margin) ->
 * float field 0/1 -> optional separable Gaussian -> optional step^3 block mean -> a grid padded by one
 * "outside" sample on every side, minus iso (g > 0 inside) -> marching cubes -> optional Taubin ->
 * vertex normals.
 *
 * Marching cubes. Corner n of a cube is at offset (n & 1, n >> 1 & 1, n >> 2 & 1). Edge a*4 + bu + 2 bv
 * runs along axis a with the other two axes u = (a+1)%3, v = (a+2)%3 at offsets bu, bv. On every cube
 * face, walked counter-clockwise as seen from outside the cube, each crossing edge is an "exit"
 * (inside -> outside) or an "enter"; the face's iso-line segments go from an exit point to an enter
 * point. A face with four crossings pairs each exit with the following enter when its inside corners
 * are connected (asymptotic decider: product of the inside values > product of the outside values, a
 * symmetric test that both cubes sharing the face evaluate to the same bits) and with the preceding
 * enter otherwise. Every crossing edge of a cube is an exit on one of its two faces and an enter on the
 * other, so the segments chain into closed loops; a neighbouring cube walks the shared face the other
 * way round and gets the same segments reversed, which makes the surface watertight and consistently
 * oriented. The loops of all 256 x 64 (configuration, face decisions) pairs are tabulated once.
 *
 * Vertices live on grid edges and are numbered globally, plane by plane (the x- and y-edges of plane
 * z, then the z-edges between planes z and z+1), after a counting pass, so slabs run in parallel and
 * agree on shared vertices; triangles are gathered slab by slab, which makes the output independent of
 * the thread count. */
#include "volume/ml_mesh.h"
#include "tensor/ml_iter.h"
#include "volume/ml_volume_ops.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ================================================================= tables */
typedef struct {
    uint8_t nloops;
    uint8_t len[4];
    uint8_t centre[4]; /* 1: fan around an extra centre vertex */
    uint8_t edges[12]; /* the loops' edge sequences, concatenated */
} mc_entry;

static mc_entry g_table[256 * 64];
static uint8_t g_amb[256];          /* faces with four crossings, per configuration */
static int8_t g_face_corner[6][4];  /* counter-clockwise seen from outside the cube */
static int8_t g_face_edge[6][4];    /* edge k joins corners k and k+1 */
static int8_t g_edge_off[12][4];    /* sample offset (x, y, z) of the edge's low end, and its axis */
static bool g_share_face[12][12];
static bool g_table_ok;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int edge_of(int c0, int c1) {
    int d = c0 ^ c1, a = d == 1 ? 0 : d == 2 ? 1 : 2;
    int u = (a + 1) % 3, v = (a + 2) % 3;
    return a * 4 + ((c0 >> u) & 1) + 2 * ((c0 >> v) & 1);
}

static bool build_entry(int cfg, int dec, mc_entry *out) {
    int next[12];
    for (int e = 0; e < 12; e++) next[e] = -1;
    for (int f = 0; f < 6; f++) {
        int b[4], n = 0;
        for (int k = 0; k < 4; k++) b[k] = (cfg >> g_face_corner[f][k]) & 1;
        for (int k = 0; k < 4; k++) n += b[k] != b[(k + 1) & 3];
        for (int k = 0; k < 4; k++) {
            if (!(b[k] && !b[(k + 1) & 3])) continue; /* exit edges only */
            int j;
            if (n == 2) {
                j = -1;
                for (int q = 0; q < 4; q++)
                    if (!b[q] && b[(q + 1) & 3]) j = q;
            } else {
                j = ((dec >> f) & 1) ? (k + 1) & 3 : (k + 3) & 3;
            }
            int e = g_face_edge[f][k];
            if (j < 0 || next[e] >= 0) return false;
            next[e] = g_face_edge[f][j];
        }
    }
    memset(out, 0, sizeof *out);
    bool seen[12] = {0};
    int pos = 0;
    for (int e0 = 0; e0 < 12; e0++) {
        if (next[e0] < 0 || seen[e0]) continue;
        if (out->nloops == 4) return false;
        int start = pos, e = e0;
        while (!seen[e]) {
            if (e < 0 || pos >= 12) return false;
            seen[e] = true;
            out->edges[pos++] = (uint8_t)e;
            e = next[e];
            if (e < 0) return false;
        }
        if (e != e0) return false;
        int len = pos - start;
        if (len < 3) return false;
        uint8_t centre = 0;
        for (int i = 0; i < len; i++)
            for (int j = i + 2; j < len; j++) {
                if (i == 0 && j == len - 1) continue; /* consecutive around the loop */
                if (g_share_face[out->edges[start + i]][out->edges[start + j]]) centre = 1;
            }
        out->len[out->nloops] = (uint8_t)len;
        out->centre[out->nloops] = centre;
        out->nloops++;
    }
    /* every crossing edge must be in a loop */
    for (int e = 0; e < 12; e++) {
        int c0 = 0, c1 = 0;
        int a = e / 4, u = (a + 1) % 3, v = (a + 2) % 3, j = e % 4;
        c0 = ((j & 1) << u) | ((j >> 1) << v);
        c1 = c0 | (1 << a);
        bool crossing = ((cfg >> c0) & 1) != ((cfg >> c1) & 1);
        if (crossing != seen[e]) return false;
    }
    return true;
}

static void build_tables(void) {
    for (int a = 0; a < 3; a++) {
        int u = (a + 1) % 3, v = (a + 2) % 3;
        for (int s = 0; s < 2; s++) {
            static const int cyc1[4][2] = {{0, 0}, {1, 0}, {1, 1}, {0, 1}};
            static const int cyc0[4][2] = {{0, 0}, {0, 1}, {1, 1}, {1, 0}};
            const int(*cyc)[2] = s ? cyc1 : cyc0;
            int f = a * 2 + s;
            for (int k = 0; k < 4; k++) g_face_corner[f][k] = (int8_t)((s << a) | (cyc[k][0] << u) | (cyc[k][1] << v));
            for (int k = 0; k < 4; k++) g_face_edge[f][k] = (int8_t)edge_of(g_face_corner[f][k], g_face_corner[f][(k + 1) & 3]);
        }
        for (int j = 0; j < 4; j++) {
            int e = a * 4 + j, off[3] = {0, 0, 0};
            off[u] = j & 1;
            off[v] = j >> 1;
            g_edge_off[e][0] = (int8_t)off[0];
            g_edge_off[e][1] = (int8_t)off[1];
            g_edge_off[e][2] = (int8_t)off[2];
            g_edge_off[e][3] = (int8_t)a;
        }
    }
    for (int f = 0; f < 6; f++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) g_share_face[g_face_edge[f][i]][g_face_edge[f][j]] = true;
    bool ok = true;
    for (int cfg = 0; cfg < 256; cfg++) {
        uint8_t amb = 0;
        for (int f = 0; f < 6; f++) {
            int b[4], n = 0;
            for (int k = 0; k < 4; k++) b[k] = (cfg >> g_face_corner[f][k]) & 1;
            for (int k = 0; k < 4; k++) n += b[k] != b[(k + 1) & 3];
            if (n == 4) amb |= (uint8_t)(1 << f);
        }
        g_amb[cfg] = amb;
        for (int dec = 0; dec < 64; dec++)
            if (!build_entry(cfg, dec, &g_table[cfg * 64 + dec])) ok = false;
    }
    g_table_ok = ok;
}

/* ================================================================ helpers */
void ml_mesh_opts_init(ml_mesh_opts *o) {
    memset(o, 0, sizeof *o);
    o->iso = 0.5;
    o->step = 1;
    o->taubin_lambda = 0.5;
    o->taubin_mu = -0.53;
}

void ml_mesh_free(ml_mesh *m) {
    if (!m) return;
    free(m->verts);
    free(m->normals);
    free(m->faces);
    memset(m, 0, sizeof *m);
}

static int nthreads_for(int64_t work) {
    if (work < 32768) return 1;
    int nt = ml_num_threads();
    return nt < 1 ? 1 : nt;
}

static double det3(const double a[16]) {
    return a[0] * (a[5] * a[10] - a[6] * a[9]) - a[1] * (a[4] * a[10] - a[6] * a[8]) +
           a[2] * (a[4] * a[9] - a[5] * a[8]);
}

/* ============================================================ marching */
typedef struct {
    int32_t *tri; /* triangles, 3 ids each; an id < 0 is extra vertex -(id + 1) of this slab */
    int64_t ntri, captri;
    float *ext; /* extra (loop centre) vertices, world */
    int64_t next, capext;
} slab_out;

static int slab_push_tri(slab_out *s, int32_t a, int32_t b, int32_t c) {
    if (s->ntri == s->captri) {
        int64_t cap = s->captri ? 2 * s->captri : 256;
        int32_t *p = realloc(s->tri, (size_t)cap * 3 * sizeof *p);
        if (!p) return -1;
        s->tri = p;
        s->captri = cap;
    }
    int32_t *t = s->tri + 3 * s->ntri++;
    t[0] = a;
    t[1] = b;
    t[2] = c;
    return 0;
}

static int32_t slab_push_ext(slab_out *s, const double p[3]) {
    if (s->next == s->capext) {
        int64_t cap = s->capext ? 2 * s->capext : 64;
        float *q = realloc(s->ext, (size_t)cap * 3 * sizeof *q);
        if (!q) return 0;
        s->ext = q;
        s->capext = cap;
    }
    float *q = s->ext + 3 * s->next;
    q[0] = (float)p[0];
    q[1] = (float)p[1];
    q[2] = (float)p[2];
    return -(int32_t)(++s->next); /* -(local + 1) */
}

typedef struct {
    const float *g; /* padded field minus iso */
    int64_t nx, ny, nz;
    double M[16]; /* padded sample index -> world */
} mc_grid;

/* world position of the crossing on the edge from sample (x, y, z) along axis a */
static inline void edge_point(const mc_grid *G, int64_t x, int64_t y, int64_t z, int a, double w[3]) {
    int64_t i = x + G->nx * (y + G->ny * z);
    int64_t d = a == 0 ? 1 : a == 1 ? G->nx : G->nx * G->ny;
    double g0 = G->g[i], g1 = G->g[i + d];
    double t = g0 / (g0 - g1);
    if (!(t >= 1e-3)) t = 1e-3; /* keeps triangles non-degenerate when a sample equals iso */
    if (t > 1 - 1e-3) t = 1 - 1e-3;
    double p[3] = {(double)x, (double)y, (double)z};
    p[a] += t;
    const double *M = G->M;
    for (int r = 0; r < 3; r++) w[r] = M[4 * r] * p[0] + M[4 * r + 1] * p[1] + M[4 * r + 2] * p[2] + M[4 * r + 3];
}

/* count crossings of the x/y edges of plane z and of the z edges between z and z+1 */
static void count_plane(const mc_grid *G, int64_t z, int64_t *cp, int64_t *cz) {
    int64_t nx = G->nx, ny = G->ny, nxy = nx * ny, np = 0, nzc = 0;
    const float *g = G->g + nxy * z;
    bool top = z + 1 < G->nz;
    for (int64_t y = 0; y < ny; y++) {
        const float *r = g + nx * y;
        for (int64_t x = 0; x < nx; x++) {
            bool in0 = r[x] > 0;
            if (x + 1 < nx && in0 != (r[x + 1] > 0)) np++;
            if (y + 1 < ny && in0 != (r[x + nx] > 0)) np++;
            if (top && in0 != (r[x + nxy] > 0)) nzc++;
        }
    }
    *cp = np;
    *cz = nzc;
}

/* ids of the x/y-edge crossings of plane z (same scan order as count_plane); writes their positions
 * into verts when verts != NULL */
static void plane_ids(const mc_grid *G, int64_t z, int64_t base, int32_t *idp, float *verts) {
    int64_t nx = G->nx, ny = G->ny, nxy = nx * ny, id = base;
    const float *g = G->g + nxy * z;
    for (int64_t y = 0; y < ny; y++) {
        const float *r = g + nx * y;
        for (int64_t x = 0; x < nx; x++) {
            bool in0 = r[x] > 0;
            for (int a = 0; a < 2; a++) {
                if (a == 0 ? x + 1 >= nx : y + 1 >= ny) continue;
                if (in0 == (r[x + (a == 0 ? 1 : nx)] > 0)) continue;
                idp[(y * nx + x) * 2 + a] = (int32_t)id;
                if (verts) {
                    double w[3];
                    edge_point(G, x, y, z, a, w);
                    float *o = verts + 3 * id;
                    o[0] = (float)w[0];
                    o[1] = (float)w[1];
                    o[2] = (float)w[2];
                }
                id++;
            }
        }
    }
}

static void zedge_ids(const mc_grid *G, int64_t z, int64_t base, int32_t *idz, float *verts) {
    int64_t nx = G->nx, ny = G->ny, nxy = nx * ny, id = base;
    const float *g = G->g + nxy * z;
    for (int64_t y = 0; y < ny; y++)
        for (int64_t x = 0; x < nx; x++) {
            int64_t i = x + nx * y;
            if ((g[i] > 0) == (g[i + nxy] > 0)) continue;
            idz[i] = (int32_t)id;
            double w[3];
            edge_point(G, x, y, z, 2, w);
            float *o = verts + 3 * id;
            o[0] = (float)w[0];
            o[1] = (float)w[1];
            o[2] = (float)w[2];
            id++;
        }
}

/* triangles of the cubes between planes z and z+1 */
static int march_slab(const mc_grid *G, int64_t z, const int32_t *idp0, const int32_t *idp1, const int32_t *idz,
                      slab_out *so) {
    int64_t nx = G->nx, ny = G->ny, nxy = nx * ny;
    const float *g = G->g;
    int64_t coff[8];
    for (int n = 0; n < 8; n++) coff[n] = (n & 1) + nx * ((n >> 1) & 1) + nxy * ((n >> 2) & 1);
    for (int64_t y = 0; y + 1 < ny; y++)
        for (int64_t x = 0; x + 1 < nx; x++) {
            int64_t i0 = x + nx * (y + ny * z);
            float v[8];
            int cfg = 0;
            for (int n = 0; n < 8; n++) {
                v[n] = g[i0 + coff[n]];
                cfg |= (v[n] > 0) << n;
            }
            if (cfg == 0 || cfg == 255) continue;
            int dec = 0;
            for (uint8_t amb = g_amb[cfg]; amb; amb &= (uint8_t)(amb - 1)) {
                int f = __builtin_ctz(amb);
                const int8_t *fc = g_face_corner[f];
                float p02 = v[fc[0]] * v[fc[2]], p13 = v[fc[1]] * v[fc[3]];
                bool in02 = v[fc[0]] > 0;
                float pin = in02 ? p02 : p13, pout = in02 ? p13 : p02;
                if (pin > pout) dec |= 1 << f;
            }
            const mc_entry *en = &g_table[cfg * 64 + dec];
            int32_t ids[12];
            int pos = 0;
            for (int l = 0; l < en->nloops; l++) {
                int len = en->len[l];
                for (int q = 0; q < len; q++) {
                    int e = en->edges[pos + q];
                    const int8_t *o = g_edge_off[e];
                    int64_t ex = x + o[0], ey = y + o[1];
                    int a = o[3];
                    if (a == 2) ids[q] = idz[ex + nx * ey];
                    else ids[q] = (o[2] ? idp1 : idp0)[(ex + nx * ey) * 2 + a];
                }
                /* the loop runs clockwise seen from outside the object: emit it reversed */
                if (!en->centre[l]) {
                    for (int q = 1; q + 1 < len; q++)
                        if (slab_push_tri(so, ids[0], ids[q + 1], ids[q])) return -1;
                } else {
                    double c[3] = {0, 0, 0};
                    for (int q = 0; q < len; q++) {
                        int e = en->edges[pos + q];
                        const int8_t *o = g_edge_off[e];
                        double w[3];
                        edge_point(G, x + o[0], y + o[1], z + o[2], o[3], w);
                        for (int r = 0; r < 3; r++) c[r] += w[r] / len;
                    }
                    int32_t cid = slab_push_ext(so, c);
                    if (!cid) return -1;
                    for (int q = 0; q < len; q++)
                        if (slab_push_tri(so, cid, ids[(q + 1) % len], ids[q])) return -1;
                }
                pos += len;
            }
        }
    return 0;
}

/* Marching cubes on the padded field G (outside on every border sample). */
static ml_err march(ml_mesh *out, const mc_grid *G, const char *op) {
    pthread_once(&g_once, build_tables);
    if (!g_table_ok) return ml_seterr(ML_ERR_INTERNAL, "%s: marching cubes tables are inconsistent", op);
    int64_t nx = G->nx, ny = G->ny, nz = G->nz;
    int64_t *cp = calloc((size_t)nz, sizeof *cp), *cz = calloc((size_t)nz, sizeof *cz);
    int64_t *bp = malloc((size_t)nz * sizeof *bp), *bz = malloc((size_t)nz * sizeof *bz);
    slab_out *so = calloc((size_t)nz, sizeof *so);
    float *verts = NULL;
    ml_err err = ML_OK;
    if (!cp || !cz || !bp || !bz || !so) {
        err = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        goto done;
    }
    int nt = nthreads_for(nx * ny * nz);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4) if (nt > 1)
    for (int64_t z = 0; z < nz; z++) count_plane(G, z, &cp[z], &cz[z]);
    int64_t nreg = 0;
    for (int64_t z = 0; z < nz; z++) {
        bp[z] = nreg;
        nreg += cp[z];
        bz[z] = nreg;
        nreg += cz[z];
    }
    if (nreg > INT32_MAX / 2) {
        err = ml_seterr(ML_ERR_UNSUPPORTED, "%s: %lld vertices are too many for int32 faces (use a larger step)", op,
                        (long long)nreg);
        goto done;
    }
    verts = malloc((size_t)(nreg ? nreg : 1) * 3 * sizeof *verts);
    if (!verts) {
        err = ml_seterr(ML_ERR_OOM, "%s: out of memory for %lld vertices", op, (long long)nreg);
        goto done;
    }
    int fail = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t nxy = nx * ny;
        int32_t *idp0 = malloc((size_t)nxy * 2 * sizeof(int32_t));
        int32_t *idp1 = malloc((size_t)nxy * 2 * sizeof(int32_t));
        int32_t *idz = malloc((size_t)nxy * sizeof(int32_t));
        bool ok = idp0 && idp1 && idz;
        if (!ok) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t z = 0; z < nz - 1; z++) {
            if (!ok) continue;
            if (cp[z] + cz[z] + cp[z + 1] == 0) continue; /* no cube of this slab is cut */
            plane_ids(G, z, bp[z], idp0, verts);
            plane_ids(G, z + 1, bp[z + 1], idp1, NULL);
            zedge_ids(G, z, bz[z], idz, verts);
            if (march_slab(G, z, idp0, idp1, idz, &so[z])) {
#pragma omp atomic write
                fail = 1;
            }
        }
        free(idp0);
        free(idp1);
        free(idz);
    }
    /* the top plane is padding: no crossings, nothing to write */
    if (fail) {
        err = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        goto done;
    }
    int64_t next = 0, ntri = 0;
    for (int64_t z = 0; z < nz; z++) {
        next += so[z].next;
        ntri += so[z].ntri;
    }
    if (nreg + next > INT32_MAX || ntri > INT32_MAX) {
        err = ml_seterr(ML_ERR_UNSUPPORTED, "%s: the mesh is too big for int32 faces (use a larger step)", op);
        goto done;
    }
    int64_t nv = nreg + next;
    float *v2 = realloc(verts, (size_t)(nv ? nv : 1) * 3 * sizeof *v2);
    int32_t *faces = malloc((size_t)(ntri ? ntri : 1) * 3 * sizeof *faces);
    if (!v2 || !faces) {
        if (v2) verts = v2;
        free(faces);
        err = ml_seterr(ML_ERR_OOM, "%s: out of memory for %lld triangles", op, (long long)ntri);
        goto done;
    }
    verts = v2;
    bool flip = det3(G->M) < 0;
    int64_t eb = nreg, tb = 0;
    for (int64_t z = 0; z < nz; z++) {
        slab_out *s = &so[z];
        if (s->next) memcpy(verts + 3 * eb, s->ext, (size_t)s->next * 3 * sizeof(float));
        for (int64_t t = 0; t < s->ntri; t++) {
            int32_t *dst = faces + 3 * (tb + t);
            for (int q = 0; q < 3; q++) {
                int32_t id = s->tri[3 * t + q];
                dst[q] = id >= 0 ? id : (int32_t)(eb + (-id - 1));
            }
            if (flip) {
                int32_t tmp = dst[1];
                dst[1] = dst[2];
                dst[2] = tmp;
            }
        }
        eb += s->next;
        tb += s->ntri;
    }
    out->verts = verts;
    out->faces = faces;
    out->nverts = nv;
    out->nfaces = ntri;
    verts = NULL;
done:
    if (so)
        for (int64_t z = 0; z < nz; z++) {
            free(so[z].tri);
            free(so[z].ext);
        }
    free(so);
    free(cp);
    free(cz);
    free(bp);
    free(bz);
    free(verts);
    return err;
}

/* march + Taubin + normals */
static ml_err finish_mesh(ml_mesh *out, const mc_grid *G, const ml_mesh_opts *o, const char *op) {
    ml_err e = march(out, G, op);
    if (e) return e;
    if (o->taubin_iters > 0 && out->nfaces) {
        e = ml_mesh_taubin(out->verts, out->nverts, out->faces, out->nfaces, o->taubin_iters, o->taubin_lambda,
                           o->taubin_mu);
        if (e) {
            ml_mesh_free(out);
            return e;
        }
    }
    out->normals = malloc((size_t)(out->nverts ? out->nverts : 1) * 3 * sizeof(float));
    if (!out->normals) {
        ml_mesh_free(out);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    }
    e = ml_mesh_vertex_normals(out->verts, out->nverts, out->faces, out->nfaces, out->normals);
    if (e) ml_mesh_free(out);
    return e;
}

static ml_err check_opts(const char *op, const ml_mesh_opts *o) {
    if (!o) return ML_OK;
    if (o->step < 1 || o->step > 64) return ml_seterr(ML_ERR_ARG, "%s: step must be an integer in [1, 64], got %d", op, o->step);
    for (int a = 0; a < 3; a++)
        if (!(o->smooth_sigma[a] >= 0 && o->smooth_sigma[a] <= 64))
            return ml_seterr(ML_ERR_ARG, "%s: smooth_sigma must be in [0, 64] voxels, got %g", op, o->smooth_sigma[a]);
    if (o->taubin_iters < 0 || o->taubin_iters > 100000)
        return ml_seterr(ML_ERR_ARG, "%s: taubin_iters must be in [0, 100000], got %d", op, o->taubin_iters);
    if (!isfinite(o->taubin_lambda) || !isfinite(o->taubin_mu) || fabs(o->taubin_lambda) > 1 || fabs(o->taubin_mu) > 1)
        return ml_seterr(ML_ERR_ARG, "%s: taubin_lambda and taubin_mu must be finite and in [-1, 1]", op);
    return ML_OK;
}

static ml_err check_affine(const char *op, const double a[16]) {
    for (int i = 0; i < 16; i++)
        if (!isfinite(a[i])) return ml_seterr(ML_ERR_ARG, "%s: the affine has a non-finite entry", op);
    double d = det3(a);
    if (!(fabs(d) > 1e-12)) return ml_seterr(ML_ERR_ARG, "%s: the affine is singular (det %g)", op, d);
    return ML_OK;
}

ml_err ml_mesh_from_field(ml_mesh *out, const float *f, const int64_t dims[3], const double affine[16],
                          const ml_mesh_opts *opts) {
    const char *op = "mesh_from_field";
    memset(out, 0, sizeof *out);
    ml_mesh_opts o;
    if (opts) o = *opts;
    else ml_mesh_opts_init(&o);
    if (!isfinite(o.iso)) return ml_seterr(ML_ERR_ARG, "%s: iso must be finite", op);
    o.step = 1;
    ml_err e = check_opts(op, &o);
    if (e) return e;
    for (int a = 0; a < 3; a++)
        if (dims[a] < 1) return ml_seterr(ML_ERR_SHAPE, "%s: dims must be >= 1, got %lld", op, (long long)dims[a]);
    e = check_affine(op, affine);
    if (e) return e;
    int64_t n = dims[0] * dims[1] * dims[2];
    double fmin = INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (f[i] < fmin) fmin = f[i];
    double pad = fmin < o.iso ? fmin : o.iso - 1;
    mc_grid G;
    G.nx = dims[0] + 2;
    G.ny = dims[1] + 2;
    G.nz = dims[2] + 2;
    float *g = malloc((size_t)(G.nx * G.ny * G.nz) * sizeof *g);
    if (!g) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    for (int64_t i = 0; i < G.nx * G.ny * G.nz; i++) g[i] = (float)(pad - o.iso);
    for (int64_t z = 0; z < dims[2]; z++)
        for (int64_t y = 0; y < dims[1]; y++) {
            float *d = g + 1 + G.nx * ((y + 1) + G.ny * (z + 1));
            const float *s = f + dims[0] * (y + dims[1] * z);
            for (int64_t x = 0; x < dims[0]; x++) d[x] = isnan(s[x]) ? (float)(pad - o.iso) : (float)(s[x] - o.iso);
        }
    G.g = g;
    double T[16];
    ml_affine_identity(T);
    T[3] = T[7] = T[11] = -1;
    ml_affine_mul(G.M, affine, T);
    e = finish_mesh(out, &G, &o, op);
    free(g);
    return e;
}

/* ======================================================= mask -> field */
/* inside-ness (0/1) of row (j, k) along axis 0, elements [i0, i0 + n) -> dst. Labels compare as
 * doubles (a label map stored as float compares exactly); NaN is outside. */
#define ML_MESH_ROW(T, CONV)                                                                                    \
    do {                                                                                                        \
        const T *src = (const T *)b;                                                                            \
        if (o->use_label) {                                                                                     \
            for (int64_t i = 0; i < n; i++) dst[i] = (double)CONV(src[off + i * st]) == o->label;              \
        } else {                                                                                                \
            for (int64_t i = 0; i < n; i++) {                                                                   \
                double x_ = (double)CONV(src[off + i * st]);                                                    \
                dst[i] = x_ != 0 && x_ == x_;                                                                   \
            }                                                                                                   \
        }                                                                                                       \
    } while (0)
#define ML_MESH_ID(x) (x)

static void mask_row(uint8_t *dst, const ml_tensor *t, const ml_mesh_opts *o, int64_t i0, int64_t j, int64_t k,
                     int64_t n) {
    const char *b = (const char *)t->storage->data;
    int64_t off = t->offset + i0 * t->stride[0] + j * t->stride[1] + k * t->stride[2], st = t->stride[0];
    switch ((ml_dtype)t->dtype) {
    case ML_F32: ML_MESH_ROW(float, ML_MESH_ID); break;
    case ML_F64: ML_MESH_ROW(double, ML_MESH_ID); break;
    case ML_I32: ML_MESH_ROW(int32_t, ML_MESH_ID); break;
    case ML_I64: ML_MESH_ROW(int64_t, ML_MESH_ID); break;
    case ML_U8:
    case ML_BOOL: ML_MESH_ROW(uint8_t, ML_MESH_ID); break;
    case ML_BF16: ML_MESH_ROW(uint16_t, ml_bf16_to_f32); break;
    case ML_F16: ML_MESH_ROW(uint16_t, ml_f16_to_f32); break;
    default:
        for (int64_t i = 0; i < n; i++) dst[i] = 0;
        break;
    }
}

/* bounding box of the mask; found = false when empty */
static ml_err mask_bbox(const ml_tensor *t, const ml_mesh_opts *o, int64_t lo[3], int64_t hi[3], bool *found,
                        const char *op) {
    int64_t X = t->shape[0], Y = t->shape[1], Z = t->shape[2];
    int nt = nthreads_for(X * Y * Z);
    int64_t glo[3] = {X, Y, Z}, ghi[3] = {-1, -1, -1};
    int fail = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        uint8_t *row = malloc((size_t)X * sizeof *row);
        int64_t l[3] = {X, Y, Z}, h[3] = {-1, -1, -1};
        if (!row) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(static)
        for (int64_t k = 0; k < Z; k++) {
            if (!row) continue;
            for (int64_t j = 0; j < Y; j++) {
                mask_row(row, t, o, 0, j, k, X);
                const uint8_t *nz = memchr(row, 1, (size_t)X);
                if (!nz) continue;
                int64_t first = nz - row, last = X - 1;
                while (!row[last]) last--;
                if (first < l[0]) l[0] = first;
                if (last > h[0]) h[0] = last;
                if (j < l[1]) l[1] = j;
                if (j > h[1]) h[1] = j;
                if (k < l[2]) l[2] = k;
                if (k > h[2]) h[2] = k;
            }
        }
#pragma omp critical(ml_mesh_bbox)
        for (int a = 0; a < 3; a++) {
            if (l[a] < glo[a]) glo[a] = l[a];
            if (h[a] > ghi[a]) ghi[a] = h[a];
        }
        free(row);
    }
    if (fail) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    *found = ghi[0] >= 0;
    for (int a = 0; a < 3; a++) {
        lo[a] = glo[a];
        hi[a] = ghi[a];
    }
    return ML_OK;
}

/* in-place separable Gaussian over a float field c[0] x c[1] x c[2] (x fastest; zero outside),
 * truncated at 4 sigma and normalised to sum 1 */
static ml_err gauss3(float *F, const int64_t c[3], const double sigma[3], const char *op) {
    int64_t X = c[0], Y = c[1], Z = c[2];
    for (int a = 0; a < 3; a++) {
        if (!(sigma[a] > 0)) continue;
        int R = (int)ceil(4 * sigma[a]);
        float *w = malloc((size_t)(2 * R + 1) * sizeof *w);
        if (!w) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        double s = 0;
        for (int k = -R; k <= R; k++) s += exp(-0.5 * k * k / (sigma[a] * sigma[a]));
        for (int k = -R; k <= R; k++) w[k + R] = (float)(exp(-0.5 * k * k / (sigma[a] * sigma[a])) / s);
        /* a = 0: each x row through a zero-padded copy; a = 1: per z plane, a = 2: per y plane, all x of a
         * line at once (unit-stride inner loops) */
        int64_t n = c[a], outer = a == 2 ? Y : Z, width = a == 0 ? 1 : X;
        int64_t stride = a == 1 ? X : X * Y;
        int nt = nthreads_for(X * Y * Z);
        int fail = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            float *buf = malloc((size_t)(a == 0 ? n + 2 * R : n * width) * sizeof *buf);
            if (!buf) {
#pragma omp atomic write
                fail = 1;
            }
#pragma omp for schedule(static)
            for (int64_t q = 0; q < outer; q++) {
                if (!buf) continue;
                if (a == 0) {
                    for (int64_t r = 0; r < Y; r++) {
                        float *row = F + X * (r + Y * q);
                        memset(buf, 0, (size_t)R * sizeof *buf);
                        memcpy(buf + R, row, (size_t)n * sizeof *buf);
                        memset(buf + R + n, 0, (size_t)R * sizeof *buf);
                        for (int64_t i = 0; i < n; i++) {
                            float acc = 0;
                            const float *pp = buf + i;
                            for (int k = 0; k <= 2 * R; k++) acc += w[k] * pp[k];
                            row[i] = acc;
                        }
                    }
                    continue;
                }
                int64_t base = a == 1 ? X * Y * q : X * q;
                for (int64_t i = 0; i < n; i++) {
                    int64_t k0 = i - R < 0 ? -i : -R, k1 = i + R >= n ? n - 1 - i : R;
                    float *o = buf + i * width;
                    for (int64_t x = 0; x < width; x++) o[x] = 0;
                    for (int64_t k = k0; k <= k1; k++) {
                        float wk = w[k + R];
                        const float *src = F + base + (i + k) * stride;
                        for (int64_t x = 0; x < width; x++) o[x] += wk * src[x];
                    }
                }
                for (int64_t i = 0; i < n; i++) memcpy(F + base + i * stride, buf + i * width, (size_t)width * sizeof(float));
            }
            free(buf);
        }
        free(w);
        if (fail) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    }
    return ML_OK;
}

ml_err ml_mesh_from_volume(ml_mesh *out, ml_volume *v, const ml_mesh_opts *opts) {
    const char *op = "Volume:mesh";
    memset(out, 0, sizeof *out);
    ml_mesh_opts o;
    if (opts) o = *opts;
    else ml_mesh_opts_init(&o);
    if (!v || !v->data) return ml_seterr(ML_ERR_ARG, "%s: no volume", op);
    ml_tensor *t = v->data;
    if (t->ndim != 3)
        return ml_seterr(ML_ERR_SHAPE, "%s: needs a 3-D volume, got shape %s%s", op, ml_shape_str(t->ndim, t->shape),
                         t->ndim == 4 ? " (select one frame first, e.g. vol:frame(t))" : "");
    if (!(o.iso > 0 && o.iso < 1)) return ml_seterr(ML_ERR_ARG, "%s: iso must be a number in (0, 1), got %g", op, o.iso);
    ml_err e = check_opts(op, &o);
    if (e) return e;
    if (o.use_label && !isfinite(o.label)) return ml_seterr(ML_ERR_ARG, "%s: label must be finite", op);
    e = check_affine(op, v->affine);
    if (e) return e;
    e = ml_vol_check_data(op, t);
    if (e) return e;
    int64_t lo[3], hi[3];
    bool found = false;
    e = mask_bbox(t, &o, lo, hi, &found, op);
    if (e) return e;
    if (!found) {
        if (o.use_label && !o.allow_missing)
            return ml_seterr(ML_ERR_ARG, "%s: label %g is not present in the volume", op, o.label);
        return ML_OK; /* empty mask: empty mesh */
    }
    bool smooth = o.smooth_sigma[0] > 0 || o.smooth_sigma[1] > 0 || o.smooth_sigma[2] > 0;
    int k = o.step;
    int64_t c[3];
    for (int a = 0; a < 3; a++) {
        int64_t m = o.smooth_sigma[a] > 0 ? (int64_t)ceil(4 * o.smooth_sigma[a]) + 1 : 0;
        lo[a] = lo[a] - m < 0 ? 0 : lo[a] - m;
        hi[a] = hi[a] + m > t->shape[a] - 1 ? t->shape[a] - 1 : hi[a] + m;
        c[a] = hi[a] - lo[a] + 1;
    }
    mc_grid G;
    int64_t n[3];
    for (int a = 0; a < 3; a++) n[a] = (c[a] + k - 1) / k;
    G.nx = n[0] + 2;
    G.ny = n[1] + 2;
    G.nz = n[2] + 2;
    int64_t gsz = G.nx * G.ny * G.nz;
    float *g = malloc((size_t)gsz * sizeof *g);
    float *F = NULL;
    bool direct = !smooth && k == 1;
    if (!direct) F = malloc((size_t)(c[0] * c[1] * c[2]) * sizeof *F);
    if (!g || (!direct && !F)) {
        free(g);
        free(F);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory for a %lldx%lldx%lld field", op, (long long)c[0],
                         (long long)c[1], (long long)c[2]);
    }
    float outside = (float)(0 - o.iso), inside = (float)(1 - o.iso);
    for (int64_t i = 0; i < gsz; i++) g[i] = outside;
    /* the mask (crop box) -> g directly, or -> F */
    int nt = nthreads_for(c[0] * c[1] * c[2]);
    int fail = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        uint8_t *row = malloc((size_t)c[0] * sizeof *row);
        if (!row) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(static)
        for (int64_t kz = 0; kz < c[2]; kz++) {
            if (!row) continue;
            for (int64_t jy = 0; jy < c[1]; jy++) {
                mask_row(row, t, &o, lo[0], lo[1] + jy, lo[2] + kz, c[0]);
                if (direct) {
                    float *d = g + 1 + G.nx * ((jy + 1) + G.ny * (kz + 1));
                    for (int64_t i = 0; i < c[0]; i++) d[i] = row[i] ? inside : outside;
                } else {
                    float *d = F + c[0] * (jy + c[1] * kz);
                    for (int64_t i = 0; i < c[0]; i++) d[i] = row[i] ? 1.0f : 0.0f;
                }
            }
        }
        free(row);
    }
    if (fail) e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    if (!e && smooth) e = gauss3(F, c, o.smooth_sigma, op);
    if (!e && !direct) {
        double inv = 1.0 / ((double)k * k * k);
        float iso = (float)o.iso;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t K = 0; K < n[2]; K++)
            for (int64_t J = 0; J < n[1]; J++)
                for (int64_t I = 0; I < n[0]; I++) {
                    double s = 0;
                    for (int64_t dz = 0; dz < k && K * k + dz < c[2]; dz++)
                        for (int64_t dy = 0; dy < k && J * k + dy < c[1]; dy++) {
                            const float *r = F + c[0] * ((J * k + dy) + c[1] * (K * k + dz));
                            for (int64_t dx = 0; dx < k && I * k + dx < c[0]; dx++) s += r[I * k + dx];
                        }
                    g[(I + 1) + G.nx * ((J + 1) + G.ny * (K + 1))] = (float)(s * inv) - iso;
                }
    }
    free(F);
    if (e) {
        free(g);
        return e;
    }
    /* padded sample p -> voxel index lo + k (p - 1) + (k - 1) / 2 -> world */
    double T[16];
    ml_affine_identity(T);
    for (int a = 0; a < 3; a++) {
        T[5 * a] = k;
        T[4 * a + 3] = (double)lo[a] + (k - 1) / 2.0 - k;
    }
    ml_affine_mul(G.M, v->affine, T);
    G.g = g;
    e = finish_mesh(out, &G, &o, op);
    free(g);
    if (!e && smooth && out->nfaces == 0) {
        /* the Gaussian spread a small or thin object below iso everywhere: mesh the plain mask rather
         * than lose the structure */
        ml_mesh_free(out);
        o.smooth_sigma[0] = o.smooth_sigma[1] = o.smooth_sigma[2] = 0;
        return ml_mesh_from_volume(out, v, &o);
    }
    return e;
}

/* ============================================================ utilities */
static void radix_sort_u64(uint64_t *a, uint64_t *tmp, int64_t n, size_t *cnt /* 65536 */) {
    for (int pass = 0; pass < 4; pass++) {
        int sh = 16 * pass;
        memset(cnt, 0, 65536 * sizeof *cnt);
        for (int64_t i = 0; i < n; i++) cnt[(a[i] >> sh) & 0xffff]++;
        if (cnt[(a[0] >> sh) & 0xffff] == (size_t)n) continue; /* all equal digits */
        size_t s = 0;
        for (int d = 0; d < 65536; d++) {
            size_t c = cnt[d];
            cnt[d] = s;
            s += c;
        }
        for (int64_t i = 0; i < n; i++) tmp[cnt[(a[i] >> sh) & 0xffff]++] = a[i];
        memcpy(a, tmp, (size_t)n * sizeof *a);
    }
}

static ml_err check_faces(const char *op, int64_t nv, const int32_t *faces, int64_t nf) {
    for (int64_t i = 0; i < 3 * nf; i++)
        if (faces[i] < 0 || faces[i] >= nv)
            return ml_seterr(ML_ERR_ARG, "%s: face %lld refers to vertex %d, outside [0, %lld)", op, (long long)(i / 3),
                             faces[i], (long long)nv);
    return ML_OK;
}

ml_err ml_mesh_stats_compute(const float *verts, int64_t nv, const int32_t *faces, int64_t nf, ml_mesh_stats *st) {
    const char *op = "mesh_stats";
    memset(st, 0, sizeof *st);
    ml_err e = check_faces(op, nv, faces, nf);
    if (e) return e;
    /* area and signed volume, relative to the first vertex for precision */
    double o[3] = {0, 0, 0};
    if (nv) for (int r = 0; r < 3; r++) o[r] = verts[r];
    double area = 0, vol = 0;
    int nt = nthreads_for(nf * 8);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : area, vol) if (nt > 1)
    for (int64_t f = 0; f < nf; f++) {
        double p[3][3];
        for (int q = 0; q < 3; q++)
            for (int r = 0; r < 3; r++) p[q][r] = verts[3 * (int64_t)faces[3 * f + q] + r] - o[r];
        double u[3] = {p[1][0] - p[0][0], p[1][1] - p[0][1], p[1][2] - p[0][2]};
        double w[3] = {p[2][0] - p[0][0], p[2][1] - p[0][1], p[2][2] - p[0][2]};
        double cr[3] = {u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2], u[0] * w[1] - u[1] * w[0]};
        area += 0.5 * sqrt(cr[0] * cr[0] + cr[1] * cr[1] + cr[2] * cr[2]);
        /* p0 . (p1 x p2) / 6 */
        vol += (p[0][0] * (p[1][1] * p[2][2] - p[1][2] * p[2][1]) - p[0][1] * (p[1][0] * p[2][2] - p[1][2] * p[2][0]) +
                p[0][2] * (p[1][0] * p[2][1] - p[1][1] * p[2][0])) /
               6.0;
    }
    st->area = area;
    st->volume = vol;
    /* edges: key (min << 33) | (max << 1) | (a > b) */
    int64_t ne = 3 * nf;
    uint64_t *k = malloc((size_t)(ne ? ne : 1) * sizeof *k), *tmp = malloc((size_t)(ne ? ne : 1) * sizeof *tmp);
    uint8_t *used = calloc((size_t)(nv ? nv : 1), 1);
    size_t *cnt = malloc(65536 * sizeof *cnt);
    if (!k || !tmp || !used || !cnt) {
        free(k);
        free(tmp);
        free(used);
        free(cnt);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    }
    for (int64_t f = 0; f < nf; f++) {
        const int32_t *t = faces + 3 * f;
        if (t[0] == t[1] || t[1] == t[2] || t[0] == t[2]) st->degenerate_faces++;
        for (int q = 0; q < 3; q++) {
            uint64_t a = (uint64_t)t[q], b = (uint64_t)t[(q + 1) % 3];
            used[a] = 1;
            k[3 * f + q] = a < b ? (a << 33) | (b << 1) : (b << 33) | (a << 1) | 1;
        }
    }
    for (int64_t i = 0; i < nv; i++) st->nverts_used += used[i];
    if (ne) radix_sort_u64(k, tmp, ne, cnt);
    free(cnt);
    for (int64_t i = 0; i < ne;) {
        int64_t j = i, n0 = 0, n1 = 0;
        while (j < ne && (k[j] >> 1) == (k[i] >> 1)) {
            if (k[j] & 1) n1++;
            else n0++;
            j++;
        }
        st->nedges++;
        if (n0 + n1 == 1) st->boundary_edges++;
        else if (n0 + n1 > 2) st->nonmanifold_edges++;
        else if (n0 != 1) st->misoriented_edges++;
        i = j;
    }
    free(k);
    free(tmp);
    free(used);
    st->euler = st->nverts_used - st->nedges + nf;
    st->watertight = nf > 0 && !st->boundary_edges && !st->nonmanifold_edges && !st->misoriented_edges &&
                     !st->degenerate_faces;
    return ML_OK;
}

ml_err ml_mesh_taubin(float *verts, int64_t nv, const int32_t *faces, int64_t nf, int iters, double lambda,
                      double mu) {
    const char *op = "mesh_taubin";
    if (iters <= 0 || nv == 0 || nf == 0) return ML_OK;
    ml_err e = check_faces(op, nv, faces, nf);
    if (e) return e;
    /* neighbour lists (CSR): both ends of every face edge; in a closed mesh each neighbour appears
     * twice (once from each adjacent face), which leaves the mean unchanged */
    int64_t *off = calloc((size_t)nv + 1, sizeof *off);
    int32_t *nb = malloc((size_t)(6 * nf) * sizeof *nb);
    float *tmp = malloc((size_t)nv * 3 * sizeof *tmp);
    if (!off || !nb || !tmp) {
        free(off);
        free(nb);
        free(tmp);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    }
    for (int64_t f = 0; f < nf; f++)
        for (int q = 0; q < 3; q++) {
            off[faces[3 * f + q] + 1]++;
            off[faces[3 * f + (q + 1) % 3] + 1]++;
        }
    for (int64_t i = 0; i < nv; i++) off[i + 1] += off[i];
    int64_t *fill = malloc((size_t)nv * sizeof *fill);
    if (!fill) {
        free(off);
        free(nb);
        free(tmp);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    }
    memcpy(fill, off, (size_t)nv * sizeof *fill);
    for (int64_t f = 0; f < nf; f++)
        for (int q = 0; q < 3; q++) {
            int32_t a = faces[3 * f + q], b = faces[3 * f + (q + 1) % 3];
            nb[fill[a]++] = b;
            nb[fill[b]++] = a;
        }
    free(fill);
    int nt = nthreads_for(nv * 8);
    float *src = verts, *dst = tmp;
    for (int it = 0; it < iters; it++)
        for (int pass = 0; pass < 2; pass++) {
            double fct = pass == 0 ? lambda : mu;
            if (fct == 0) continue;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
            for (int64_t i = 0; i < nv; i++) {
                int64_t b = off[i], n = off[i + 1] - b;
                for (int r = 0; r < 3; r++) {
                    double p = src[3 * i + r];
                    if (n == 0) {
                        dst[3 * i + r] = (float)p;
                        continue;
                    }
                    double s = 0;
                    for (int64_t j = 0; j < n; j++) s += src[3 * (int64_t)nb[b + j] + r];
                    dst[3 * i + r] = (float)(p + fct * (s / (double)n - p));
                }
            }
            float *sw = src;
            src = dst;
            dst = sw;
        }
    if (src != verts) memcpy(verts, src, (size_t)nv * 3 * sizeof *verts);
    free(off);
    free(nb);
    free(tmp);
    return ML_OK;
}

ml_err ml_mesh_vertex_normals(const float *verts, int64_t nv, const int32_t *faces, int64_t nf, float *normals) {
    const char *op = "mesh_normals";
    ml_err e = check_faces(op, nv, faces, nf);
    if (e) return e;
    double *acc = calloc((size_t)(nv ? nv : 1) * 3, sizeof *acc);
    if (!acc) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    for (int64_t f = 0; f < nf; f++) {
        const int32_t *t = faces + 3 * f;
        const float *a = verts + 3 * (int64_t)t[0], *b = verts + 3 * (int64_t)t[1], *c = verts + 3 * (int64_t)t[2];
        double u[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]}, w[3] = {c[0] - a[0], c[1] - a[1], c[2] - a[2]};
        double n[3] = {u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2], u[0] * w[1] - u[1] * w[0]};
        for (int q = 0; q < 3; q++)
            for (int r = 0; r < 3; r++) acc[3 * (int64_t)t[q] + r] += n[r];
    }
    for (int64_t i = 0; i < nv; i++) {
        double *n = acc + 3 * i, l = sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
        for (int r = 0; r < 3; r++) normals[3 * i + r] = l > 0 ? (float)(n[r] / l) : 0.0f;
    }
    free(acc);
    return ML_OK;
}

/* ---- vertex clustering */
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static ml_err cluster_once(ml_mesh *out, const float *verts, int64_t nv, const int32_t *faces, int64_t nf, double h,
                           const double lo[3], const char *op) {
    memset(out, 0, sizeof *out);
    int64_t cap = 16;
    while (cap < 2 * nv) cap *= 2;
    uint64_t *keys = malloc((size_t)cap * sizeof *keys);
    int32_t *slot = malloc((size_t)cap * sizeof *slot);
    int32_t *map = malloc((size_t)(nv ? nv : 1) * sizeof *map);
    double *sum = calloc((size_t)(nv ? nv : 1) * 3, sizeof *sum);
    int32_t *cnt = calloc((size_t)(nv ? nv : 1), sizeof *cnt);
    int32_t *fo = malloc((size_t)(nf ? nf : 1) * 3 * sizeof *fo);
    ml_err e = ML_OK;
    if (!keys || !slot || !map || !sum || !cnt || !fo) {
        e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        goto done;
    }
    for (int64_t i = 0; i < cap; i++) slot[i] = -1;
    int32_t nnew = 0;
    for (int64_t i = 0; i < nv; i++) {
        uint64_t c[3];
        for (int r = 0; r < 3; r++) c[r] = (uint64_t)(int64_t)floor((verts[3 * i + r] - lo[r]) / h) & 0x1fffff;
        uint64_t key = c[0] | (c[1] << 21) | (c[2] << 42);
        uint64_t s = mix64(key) & (uint64_t)(cap - 1);
        while (slot[s] >= 0 && keys[s] != key) s = (s + 1) & (uint64_t)(cap - 1);
        if (slot[s] < 0) {
            keys[s] = key;
            slot[s] = nnew++;
        }
        int32_t id = slot[s];
        map[i] = id;
        for (int r = 0; r < 3; r++) sum[3 * id + r] += verts[3 * i + r];
        cnt[id]++;
    }
    int64_t nfo = 0;
    for (int64_t f = 0; f < nf; f++) {
        int32_t a = map[faces[3 * f]], b = map[faces[3 * f + 1]], c = map[faces[3 * f + 2]];
        if (a == b || b == c || a == c) continue;
        fo[3 * nfo] = a;
        fo[3 * nfo + 1] = b;
        fo[3 * nfo + 2] = c;
        nfo++;
    }
    out->verts = malloc((size_t)(nnew ? nnew : 1) * 3 * sizeof(float));
    out->normals = malloc((size_t)(nnew ? nnew : 1) * 3 * sizeof(float));
    if (!out->verts || !out->normals) {
        e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        goto done;
    }
    for (int32_t i = 0; i < nnew; i++)
        for (int r = 0; r < 3; r++) out->verts[3 * i + r] = (float)(sum[3 * i + r] / cnt[i]);
    out->faces = fo;
    fo = NULL;
    out->nverts = nnew;
    out->nfaces = nfo;
    e = ml_mesh_vertex_normals(out->verts, out->nverts, out->faces, out->nfaces, out->normals);
done:
    if (e) ml_mesh_free(out);
    free(keys);
    free(slot);
    free(map);
    free(sum);
    free(cnt);
    free(fo);
    return e;
}

ml_err ml_mesh_decimate_cluster(ml_mesh *out, const float *verts, int64_t nv, const int32_t *faces, int64_t nf,
                                int64_t max_faces) {
    const char *op = "mesh_decimate";
    memset(out, 0, sizeof *out);
    if (max_faces < 1) return ml_seterr(ML_ERR_ARG, "%s: max_faces must be >= 1", op);
    ml_err e = check_faces(op, nv, faces, nf);
    if (e) return e;
    if (nf <= max_faces) {
        out->verts = malloc((size_t)(nv ? nv : 1) * 3 * sizeof(float));
        out->normals = malloc((size_t)(nv ? nv : 1) * 3 * sizeof(float));
        out->faces = malloc((size_t)(nf ? nf : 1) * 3 * sizeof(int32_t));
        if (!out->verts || !out->normals || !out->faces) {
            ml_mesh_free(out);
            return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        }
        if (nv) memcpy(out->verts, verts, (size_t)nv * 3 * sizeof(float));
        if (nf) memcpy(out->faces, faces, (size_t)nf * 3 * sizeof(int32_t));
        out->nverts = nv;
        out->nfaces = nf;
        e = ml_mesh_vertex_normals(out->verts, nv, out->faces, nf, out->normals);
        if (e) ml_mesh_free(out);
        return e;
    }
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int64_t i = 0; i < nv; i++)
        for (int r = 0; r < 3; r++) {
            double x = verts[3 * i + r];
            if (x < lo[r]) lo[r] = x;
            if (x > hi[r]) hi[r] = x;
        }
    ml_mesh_stats st;
    e = ml_mesh_stats_compute(verts, nv, faces, nf, &st);
    if (e) return e;
    double h = sqrt(2.0 * st.area / (double)max_faces);
    double ext = fmax(hi[0] - lo[0], fmax(hi[1] - lo[1], hi[2] - lo[2]));
    if (!(h > ext / 2e6)) h = ext / 2e6 > 0 ? ext / 2e6 : 1e-3;
    for (int tries = 0; tries < 60; tries++) {
        e = cluster_once(out, verts, nv, faces, nf, h, lo, op);
        if (e) return e;
        if (out->nfaces <= max_faces) return ML_OK;
        ml_mesh_free(out);
        h *= 1.25;
    }
    return ml_seterr(ML_ERR_INTERNAL, "%s: could not reach %lld faces", op, (long long)max_faces);
}
