/* medlua meshes: marching cubes from a binary mask or a label in a volume, in world millimetres.
 * Lua-free core (never include lua.h here).
 *
 *   ml_mesh_opts o;  ml_mesh_opts_init(&o);  o.use_label = true;  o.label = 5;  o.smooth_sigma[0..2] = 1;
 *   ml_mesh m;  ml_err e = ml_mesh_from_volume(&m, vol, &o);   ...   ml_mesh_free(&m);
 *
 * The surface
 *  - is the iso-surface f = iso of the mask f (1 inside, 0 outside; optionally Gaussian-smoothed,
 *    optionally block-averaged over step^3 voxels), sampled on the voxel centres and placed in world
 *    (RAS+ mm) space through the volume's 4x4 voxel-to-world affine: a vertex on the grid edge
 *    between voxel centres p and q lies at affine * (p + t (q - p)).
 *  - is closed: the grid is padded by one sample of "outside" on every side, so an object touching
 *    the border of the volume gets a cap there.
 *  - is watertight and a 2-manifold: every edge is shared by exactly two triangles that traverse it
 *    in opposite directions. Cube faces whose four corners alternate inside/outside (the ambiguous
 *    faces of marching cubes) are resolved by the asymptotic decider, computed from the face's four
 *    values only, so both cubes sharing the face make the same choice. The binary tie (a
 *    checkerboard face of a 0/1 mask) separates the inside corners: voxels that touch only along an
 *    edge or at a corner give separate surfaces, as 6-connectivity does. Each cube's surface pieces
 *    are closed loops of edge points, traced from the face segments (so the 256 classic
 *    configurations are derived, not copied), and each loop becomes a triangle fan; a loop that
 *    visits two points of one cube face non-consecutively is fanned around an extra centre vertex
 *    instead, so no fan diagonal can be shared with the neighbouring cube.
 *  - is oriented outward: triangles are counter-clockwise seen from outside (normal = (b-a)x(c-a)
 *    points away from the object), also for affines with a negative determinant (e.g. LAS data).
 *  - has shared (indexed) vertices; the output is the same for any thread count.
 */
#ifndef ML_MESH_H
#define ML_MESH_H

#include "volume/ml_volume.h"

typedef struct ml_mesh_opts {
    bool use_label;          /* true: inside = voxel == label; false: inside = voxel != 0 (NaN outside) */
    double label;
    bool allow_missing;      /* use_label and the label absent: empty mesh instead of an error */
    double smooth_sigma[3];  /* Gaussian pre-smoothing of the mask, sigma in voxels per axis (0: none);
                                truncated at 4 sigma. Parts thinner than about 2 sigma shrink or vanish;
                                an object that would vanish entirely is meshed unsmoothed instead */
    double iso;              /* iso level in (0, 1); default 0.5 */
    int step;                /* >= 1: one sample per step^3 voxel block (block mean) for big structures */
    int taubin_iters;        /* Taubin smoothing of the vertices (0: none) */
    double taubin_lambda;    /* default 0.5 */
    double taubin_mu;        /* default -0.53; 0 gives plain Laplacian smoothing (shrinks) */
} ml_mesh_opts;

void ml_mesh_opts_init(ml_mesh_opts *o);

typedef struct ml_mesh {
    int64_t nverts, nfaces;
    float *verts;    /* [nverts][3] world mm (RAS+) */
    float *normals;  /* [nverts][3] unit outward vertex normals (area-weighted face normals) */
    int32_t *faces;  /* [nfaces][3] vertex indices, counter-clockwise seen from outside */
} ml_mesh;

/* Mesh of a 3-D volume's mask (see ml_mesh_opts). *out is always initialised (empty on error or for
 * an empty mask); free with ml_mesh_free. Errors: a 4-D volume, a label that is not present (unless
 * allow_missing), bad options, a singular affine, out of memory. */
ml_err ml_mesh_from_volume(ml_mesh *out, ml_volume *v, const ml_mesh_opts *o);

/* Marching cubes on a scalar field f[x + nx*(y + ny*z)] (float, no padding needed: the field is
 * treated as <= iso outside), vertices placed through `affine` (sample index -> world). The same
 * surface rules as above; taubin_* and iso of o are used, the mask options are not. */
ml_err ml_mesh_from_field(ml_mesh *out, const float *f, const int64_t dims[3], const double affine[16],
                          const ml_mesh_opts *o);

void ml_mesh_free(ml_mesh *m); /* NULL-safe; leaves an empty mesh */

/* ---------------------------------------------------------------- utilities */
typedef struct ml_mesh_stats {
    double area;                /* sum of triangle areas (mm^2 for world meshes) */
    double volume;              /* signed enclosed volume by the divergence theorem (mm^3); > 0 when
                                   the triangles face outward */
    int64_t nverts_used;        /* vertices referenced by a face */
    int64_t nedges;             /* undirected edges */
    int64_t boundary_edges;     /* used by one face */
    int64_t nonmanifold_edges;  /* used by more than two faces */
    int64_t misoriented_edges;  /* used by two faces in the same direction */
    int64_t degenerate_faces;   /* a repeated vertex index */
    int64_t euler;              /* nverts_used - nedges + nfaces (2 per sphere-like component, 0 for a torus) */
    bool watertight;            /* every edge in exactly two faces, opposite directions, no degenerate face */
} ml_mesh_stats;

/* Statistics of a triangle mesh (any vertex/face arrays). Errors: a face index out of range, OOM. */
ml_err ml_mesh_stats_compute(const float *verts, int64_t nv, const int32_t *faces, int64_t nf, ml_mesh_stats *st);

/* Taubin (lambda/mu) smoothing in place over the uniform Laplacian of the face graph. */
ml_err ml_mesh_taubin(float *verts, int64_t nv, const int32_t *faces, int64_t nf, int iters, double lambda,
                      double mu);

/* Unit vertex normals from area-weighted face normals (a vertex in no face gets (0, 0, 0)). */
ml_err ml_mesh_vertex_normals(const float *verts, int64_t nv, const int32_t *faces, int64_t nf, float *normals);

/* A smaller mesh for display by vertex clustering on a grid whose cell grows until the result has at
 * most max_faces triangles (vertices in one cell merge to their mean; collapsed and repeated triangles
 * are dropped; normals recomputed). Not guaranteed watertight. A mesh already small enough is copied. */
ml_err ml_mesh_decimate_cluster(ml_mesh *out, const float *verts, int64_t nv, const int32_t *faces, int64_t nf,
                                int64_t max_faces);

#endif
