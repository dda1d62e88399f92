/* medlua: the program. Runs a Lua script with the medlua library preloaded, or a REPL.
 *
 *   medlua script.lua args...   run a script; global `arg` as in the `lua` program
 *   medlua                      REPL (GNU readline: history in ~/.medlua_history, tab completion)
 *   medlua -e stat -l mod -i -v -h -- -
 *
 * Structure follows lua.c (Lua 5.4): everything runs inside a protected pmain, errors print a
 * traceback to stderr and exit with status 1, and Ctrl-C sets a hook that raises "interrupted!" at
 * the next Lua instruction, so a running kernel or write is never cut in half. At the prompt,
 * Ctrl-C clears the line (and any pending continuation lines). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <oneapi/dnnl/dnnl.h>

#include "tensor/tensor_lua.h"

#define HISTORY_FILE ".medlua_history"
#define HISTORY_MAX 1000

static const char *progname = "medlua";
static lua_State *globalL = NULL;

/* --------------------------------------------------------------- signals */
enum { ST_OTHER, ST_RUNNING, ST_PROMPT };
static volatile sig_atomic_t g_state = ST_OTHER;
static volatile sig_atomic_t g_sigint_at_prompt = 0;

static void lstop(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
    if (g_state == ST_RUNNING) {
        /* as lua.c's laction: stop at the next instruction; never kill the process mid-work */
        lua_sethook(globalL, lstop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
    } else if (g_state == ST_PROMPT) {
        g_sigint_at_prompt = 1;
    } else {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

/* Running Lua: restart interrupted system calls (a script's I/O is not disturbed). At the prompt:
 * no restart, so the wait for input returns and the line can be cleared. */
static void set_state(int st) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = st == ST_PROMPT ? 0 : SA_RESTART;
    g_state = st;
    sigaction(SIGINT, &sa, NULL);
}

/* -------------------------------------------------------------- messages */
static void print_usage(const char *badoption) {
    FILE *f = badoption ? stderr : stdout;
    if (badoption) {
        if (badoption[0] == '-' && (badoption[1] == 'e' || badoption[1] == 'l'))
            fprintf(f, "%s: '%s' needs argument\n", progname, badoption);
        else
            fprintf(f, "%s: unrecognized option '%s'\n", progname, badoption);
    }
    fprintf(f,
            "usage: %s [options] [script [args]]\n"
            "Runs a Lua 5.4 script with the medlua tensor library preloaded (global 'medlua'),\n"
            "or an interactive prompt when no script is given and stdin is a terminal.\n"
            "Available options are:\n"
            "  -e stat        execute string 'stat'\n"
            "  -i             enter interactive mode after executing 'script'\n"
            "  -l mod         require library 'mod' into global 'mod' (last name component)\n"
            "  -l g=mod       require library 'mod' into global 'g'\n"
            "  -v, --version  show version information\n"
            "  -h, --help     show this help\n"
            "  -E             ignore environment variables (MEDLUA_PATH, MEDLUA_INIT, LUA_PATH)\n"
            "  -W             turn warnings on\n"
            "  --             stop handling options\n"
            "  -              stop handling options and execute stdin\n"
            "Environment: MEDLUA_PATH (prepended to package.path), MEDLUA_INIT (code or @file run first).\n",
            progname);
    fflush(f);
}

static void print_version(void) {
    const dnnl_version_t *v = dnnl_version();
    printf("medlua %s (%s, oneDNN %d.%d.%d)\n", ML_LUA_VERSION, LUA_RELEASE, v->major, v->minor, v->patch);
    fflush(stdout);
}

static void l_message(const char *pname, const char *msg) {
    if (pname) fprintf(stderr, "%s: ", pname);
    fprintf(stderr, "%s\n", msg);
    fflush(stderr);
}

static int report(lua_State *L, int status) {
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        if (msg == NULL) msg = "(error object is not a string)";
        l_message(progname, msg);
        lua_pop(L, 1);
    }
    return status;
}

static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int docall(lua_State *L, int narg, int nres) {
    int base = lua_gettop(L) - narg;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    int prev = g_state;
    set_state(ST_RUNNING);
    int status = lua_pcall(L, narg, nres, base);
    set_state(prev);
    lua_sethook(L, NULL, 0, 0); /* a Ctrl-C that arrived too late to fire */
    lua_remove(L, base);
    return status;
}

static int dochunk(lua_State *L, int status) {
    if (status == LUA_OK) status = docall(L, 0, 0);
    return report(L, status);
}

static int dofile(lua_State *L, const char *name) { return dochunk(L, luaL_loadfile(L, name)); }

static int dostring(lua_State *L, const char *s, const char *name) {
    return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l mod or -l g=mod: global g (default: the last component of mod) = require(mod) */
static int dolibrary(lua_State *L, const char *spec) {
    const char *eq = strchr(spec, '=');
    const char *mod = eq ? eq + 1 : spec;
    lua_getglobal(L, "require");
    lua_pushstring(L, mod);
    int status = docall(L, 1, 1);
    if (status == LUA_OK) {
        if (eq) lua_pushlstring(L, spec, (size_t)(eq - spec));
        else {
            const char *dot = strrchr(mod, '.');
            lua_pushstring(L, dot ? dot + 1 : mod);
        }
        lua_insert(L, -2);
        lua_setglobal(L, lua_tostring(L, -2));
        lua_pop(L, 1);
    }
    return report(L, status);
}

/* ------------------------------------------------------------- arguments */
#define has_error 1
#define has_i 2
#define has_v 4
#define has_e 8
#define has_E 16
#define has_h 32

/* Returns the option flags; *first = index of the script (0: none), or of the bad option. */
static int collectargs(char **argv, int *first) {
    int args = 0;
    *first = 0;
    for (int i = 1; argv[i] != NULL; i++) {
        *first = i;
        if (argv[i][0] != '-') return args; /* the script */
        if (strcmp(argv[i], "--version") == 0) { args |= has_v; continue; }
        if (strcmp(argv[i], "--help") == 0) { args |= has_h; continue; }
        switch (argv[i][1]) {
        case '-': /* -- */
            if (argv[i][2] != '\0') return args | has_error;
            *first = argv[i + 1] ? i + 1 : 0;
            return args;
        case '\0': /* - : stdin */
            return args;
        case 'E':
            if (argv[i][2] != '\0') return args | has_error;
            args |= has_E;
            break;
        case 'W':
            if (argv[i][2] != '\0') return args | has_error;
            break;
        case 'h':
            if (argv[i][2] != '\0') return args | has_error;
            args |= has_h;
            break;
        case 'i':
            args |= has_i; /* -i implies -v */
            /* fallthrough */
        case 'v':
            if (argv[i][2] != '\0') return args | has_error;
            args |= has_v;
            break;
        case 'e':
            args |= has_e;
            /* fallthrough */
        case 'l':
            if (argv[i][2] == '\0') {
                i++;
                if (argv[i] == NULL || argv[i][0] == '-') {
                    *first = i - 1;
                    return args | has_error;
                }
            }
            break;
        default: return args | has_error;
        }
    }
    *first = 0;
    return args;
}

static int runargs(lua_State *L, char **argv, int n) {
    for (int i = 1; i < n; i++) {
        int option = argv[i][1];
        switch (option) {
        case 'e':
        case 'l': {
            const char *extra = argv[i] + 2;
            if (*extra == '\0') extra = argv[++i];
            int status = option == 'e' ? dostring(L, extra, "=(command line)") : dolibrary(L, extra);
            if (status != LUA_OK) return 0;
            break;
        }
        case 'W': lua_warning(L, "@on", 0); break;
        default: break;
        }
    }
    return 1;
}

static void createargtable(lua_State *L, char **argv, int argc, int script) {
    if (script == argc) script = 0;
    int narg = argc - (script + 1);
    lua_createtable(L, narg > 0 ? narg : 0, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

static int pushargs(lua_State *L) {
    if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
    int n = (int)luaL_len(L, -1);
    luaL_checkstack(L, n + 3, "too many arguments to script");
    int i;
    for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
    lua_remove(L, -i);
    return n;
}

static int handle_script(lua_State *L, char **argv) {
    const char *fname = argv[0];
    if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL; /* stdin */
    int status = luaL_loadfile(L, fname);
    if (status == LUA_OK) {
        int n = pushargs(L);
        status = docall(L, n, LUA_MULTRET);
    }
    return report(L, status);
}

static int handle_init(lua_State *L) {
    const char *init = getenv("MEDLUA_INIT");
    if (init == NULL) return LUA_OK;
    if (init[0] == '@') return dofile(L, init + 1);
    return dostring(L, init, "=MEDLUA_INIT");
}

/* --------------------------------------------------------- library setup */
static void setup_library(lua_State *L, int noenv) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    luaL_Buffer b;
    lua_getglobal(L, "package");
    int pkg = lua_gettop(L);
    luaL_buffinit(L, &b);
    const char *env = noenv ? NULL : getenv("MEDLUA_PATH");
    if (env && *env) {
        luaL_addstring(&b, env);
        luaL_addchar(&b, ';');
    }
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        const char *dir = exe[0] ? exe : "/";
        static const char *const rel[] = {"/../lua/?.lua", "/../lua/?/init.lua", "/lua/?.lua", "/lua/?/init.lua",
                                          "/../share/medlua/lua/?.lua", "/../share/medlua/lua/?/init.lua"};
        for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            luaL_addstring(&b, dir);
            luaL_addstring(&b, rel[i]);
            luaL_addchar(&b, ';');
        }
    }
    lua_getfield(L, pkg, "path");
    const char *old = lua_tostring(L, -1);
    if (!old) old = "";
    bool has_dot = strstr(old, "./?.lua") != NULL;
    luaL_addvalue(&b); /* the old path */
    if (!has_dot) luaL_addstring(&b, ";./?.lua");
    luaL_pushresult(&b);
    lua_setfield(L, pkg, "path");
    lua_pop(L, 1);

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_medlua);
    lua_setfield(L, -2, "medlua");
    lua_pop(L, 1);
}

/* global medlua = require "medlua"; then Lua-side extensions if the library ships them */
static int load_medlua(lua_State *L) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "medlua");
    int status = docall(L, 1, 1);
    if (status != LUA_OK) return report(L, status);
    lua_setglobal(L, "medlua");
    return dostring(L,
                    "if package.searchpath('medlua.core_ext', package.path) then require 'medlua.core_ext' end",
                    "=(medlua init)");
}

/* ---------------------------------------------------------------- the REPL */
static bool g_tty;
static char g_history_path[PATH_MAX];

/* Tab completion: candidates for `prefix` after `expr` and separator ('.', ':' or none). */
static bool is_ident(const char *s) {
    if (!(isalpha((unsigned char)*s) || *s == '_')) return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_')) return false;
    return true;
}

static void add_candidate(lua_State *L, int set, const char *k, const char *prefix) {
    if (!is_ident(k) || strncmp(k, prefix, strlen(prefix)) != 0) return;
    lua_pushboolean(L, 1);
    lua_setfield(L, set, k);
}

static bool callable(lua_State *L, int idx) {
    if (lua_isfunction(L, idx)) return true;
    if (luaL_getmetafield(L, idx, "__call") != LUA_TNIL) {
        lua_pop(L, 1);
        return true;
    }
    return false;
}

/* keys of the table at tbl (and of its __index chain of tables) */
static void add_table_keys(lua_State *L, int tbl, int set, const char *prefix, bool only_functions, int depth) {
    tbl = lua_absindex(L, tbl);
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        if (lua_type(L, -2) == LUA_TSTRING && (!only_functions || callable(L, -1)))
            add_candidate(L, set, lua_tostring(L, -2), prefix);
        lua_pop(L, 1);
    }
    if (depth < 8 && lua_getmetatable(L, tbl)) {
        if (lua_getfield(L, -1, "__index") == LUA_TTABLE) add_table_keys(L, -1, set, prefix, only_functions, depth + 1);
        lua_pop(L, 2);
    }
}

static int complete_collect(lua_State *L) {
    const char *expr = lua_tostring(L, 1);
    const char *sep = lua_tostring(L, 2);
    const char *prefix = lua_tostring(L, 3);
    lua_settop(L, 3);
    lua_newtable(L);
    int set = 4;
    static const char *const keywords[] = {"and", "break", "do", "else", "elseif", "end", "false", "for",
                                           "function", "goto", "if", "in", "local", "nil", "not", "or",
                                           "repeat", "return", "then", "true", "until", "while", NULL};
    if (!*sep) {
        lua_pushglobaltable(L);
        add_table_keys(L, -1, set, prefix, false, 0);
        lua_pop(L, 1);
        for (int i = 0; keywords[i]; i++) add_candidate(L, set, keywords[i], prefix);
        return 1;
    }
    /* evaluate a.b.c (names only, no calls) */
    lua_pushglobaltable(L);
    const char *p = expr;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0) return 1;
        int tp = lua_type(L, -1);
        if (tp != LUA_TTABLE && tp != LUA_TUSERDATA && tp != LUA_TSTRING) return 1;
        lua_pushlstring(L, p, len);
        lua_gettable(L, -2);
        lua_remove(L, -2);
        p += len + (dot ? 1 : 0);
    }
    int v = lua_gettop(L);
    bool only_functions = *sep == ':';
    if (lua_istable(L, v)) add_table_keys(L, v, set, prefix, only_functions, 0);
    else if (lua_getmetatable(L, v)) {
        int mt = lua_gettop(L);
        if (lua_getfield(L, mt, "__methods") == LUA_TTABLE) add_table_keys(L, -1, set, prefix, false, 0);
        lua_pop(L, 1);
        if (lua_getfield(L, mt, "__index") == LUA_TTABLE) add_table_keys(L, -1, set, prefix, only_functions, 0);
        lua_pop(L, 1);
        if (!only_functions && lua_getfield(L, mt, "__properties") == LUA_TTABLE) add_table_keys(L, -1, set, prefix, false, 0);
        lua_pop(L, 1);
    }
    lua_settop(L, set);
    return 1;
}

static char **g_cands;
static size_t g_ncands, g_cand_pos;

static void free_cands(void) {
    for (size_t i = g_cand_pos; i < g_ncands; i++) free(g_cands[i]);
    free(g_cands);
    g_cands = NULL;
    g_ncands = g_cand_pos = 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static char *cand_generator(const char *text, int state) {
    (void)text;
    if (state == 0) g_cand_pos = 0;
    if (g_cand_pos < g_ncands) {
        char *s = g_cands[g_cand_pos];
        g_cands[g_cand_pos++] = NULL; /* readline frees it */
        return s;
    }
    return NULL;
}

static char **medlua_complete(const char *text, int start, int end) {
    (void)end;
    rl_attempted_completion_over = 1;
    rl_completion_append_character = '\0';
    lua_State *L = globalL;
    const char *line = rl_line_buffer;
    char sep[2] = {0, 0};
    int expr_end = start, expr_start;
    if (start > 0 && (line[start - 1] == '.' || line[start - 1] == ':')) {
        sep[0] = line[start - 1];
        expr_end = start - 1;
    }
    expr_start = expr_end;
    if (sep[0])
        while (expr_start > 0 && (isalnum((unsigned char)line[expr_start - 1]) || line[expr_start - 1] == '_' ||
                                  line[expr_start - 1] == '.'))
            expr_start--;
    if (sep[0] && expr_start == expr_end) return NULL;
    free_cands();
    int top = lua_gettop(L);
    lua_pushcfunction(L, complete_collect);
    lua_pushlstring(L, line + expr_start, (size_t)(expr_end - expr_start));
    lua_pushstring(L, sep);
    lua_pushstring(L, text);
    if (lua_pcall(L, 3, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
        lua_settop(L, top);
        return NULL;
    }
    size_t cap = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (g_ncands == cap) {
            cap = cap ? 2 * cap : 64;
            char **nc = realloc(g_cands, cap * sizeof *nc);
            if (!nc) break;
            g_cands = nc;
        }
        g_cands[g_ncands++] = strdup(lua_tostring(L, -1));
    }
    lua_settop(L, top);
    if (g_ncands == 0) return NULL;
    qsort(g_cands, g_ncands, sizeof *g_cands, cmp_str);
    return rl_completion_matches(text, cand_generator);
}

static char *g_rl_line;
static int g_rl_done;

static void rl_on_line(char *line) {
    g_rl_line = line;
    g_rl_done = 1;
    rl_callback_handler_remove();
}

/* 1: a line in *out (malloc'd); 0: end of input; -1: cancelled with Ctrl-C */
static int read_line(const char *prompt, char **out) {
    *out = NULL;
    g_sigint_at_prompt = 0;
    if (!g_tty) {
        fputs(prompt, stdout);
        fflush(stdout);
        char *buf = NULL;
        size_t cap = 0;
        set_state(ST_PROMPT);
        errno = 0;
        ssize_t n = getline(&buf, &cap, stdin);
        set_state(ST_OTHER);
        if (n < 0) {
            free(buf);
            if (g_sigint_at_prompt || errno == EINTR) {
                g_sigint_at_prompt = 0;
                clearerr(stdin);
                fputc('\n', stdout);
                return -1;
            }
            return 0;
        }
        if (n > 0 && buf[n - 1] == '\n') buf[n - 1] = '\0';
        *out = buf;
        return 1;
    }
    g_rl_line = NULL;
    g_rl_done = 0;
    set_state(ST_PROMPT);
    rl_callback_handler_install(prompt, rl_on_line);
    int r = 1;
    int fd = fileno(rl_instream ? rl_instream : stdin);
    while (!g_rl_done) {
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(fd, &fds);
        int n = g_sigint_at_prompt ? -1 : select(fd + 1, &fds, NULL, NULL, NULL);
        if (g_sigint_at_prompt) {
            g_sigint_at_prompt = 0;
            rl_free_line_state();
            rl_callback_sigcleanup();
            rl_replace_line("", 0);
            rl_callback_handler_remove();
            fputs("^C\n", stdout);
            fflush(stdout);
            r = -1;
            break;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            rl_callback_handler_remove();
            r = 0;
            break;
        }
        rl_callback_read_char();
    }
    set_state(ST_OTHER);
    if (r == 1) {
        if (g_rl_line == NULL) {
            fputc('\n', stdout);
            r = 0;
        } else *out = g_rl_line;
    }
    return r;
}

static void saveline(const char *line) {
    if (!g_tty || !line[0]) return;
    HIST_ENTRY *last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
    if (last && strcmp(last->line, line) == 0) return;
    add_history(line);
    if (g_history_path[0]) append_history(1, g_history_path);
}

static const char *get_prompt(lua_State *L, int firstline) {
    if (lua_getglobal(L, firstline ? "_PROMPT" : "_PROMPT2") == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushstring(L, firstline ? "> " : ">> ");
    } else {
        luaL_tolstring(L, -1, NULL);
        lua_remove(L, -2);
    }
    return lua_tostring(L, -1);
}

/* pushes the line; returns 1, 0 (end of input) or -1 (cancelled) */
static int pushline(lua_State *L, int firstline) {
    char *b;
    int r = read_line(get_prompt(L, firstline), &b);
    lua_pop(L, 1); /* prompt */
    if (r <= 0) return r;
    if (firstline && b[0] == '=') lua_pushfstring(L, "return %s", b + 1);
    else lua_pushstring(L, b);
    free(b);
    return 1;
}

static int addreturn(lua_State *L) {
    const char *line = lua_tostring(L, -1);
    const char *retline = lua_pushfstring(L, "return %s;", line);
    int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
    if (status == LUA_OK) {
        lua_remove(L, -2);
        saveline(line);
    } else lua_pop(L, 2);
    return status;
}

#define EOFMARK "<eof>"
#define MARKLEN (sizeof(EOFMARK) - 1)
#define ST_CANCELLED (-2)

static int incomplete(lua_State *L, int status) {
    if (status == LUA_ERRSYNTAX) {
        size_t lmsg;
        const char *msg = lua_tolstring(L, -1, &lmsg);
        if (lmsg >= MARKLEN && strcmp(msg + lmsg - MARKLEN, EOFMARK) == 0) {
            lua_pop(L, 1);
            return 1;
        }
    }
    return 0;
}

static int multiline(lua_State *L) {
    for (;;) {
        size_t len;
        const char *line = lua_tolstring(L, 1, &len);
        int status = luaL_loadbuffer(L, line, len, "=stdin");
        if (!incomplete(L, status)) {
            saveline(line);
            return status;
        }
        int r = pushline(L, 0);
        if (r == 0) { /* end of input inside a statement: report the syntax error */
            saveline(line);
            return luaL_loadbuffer(L, line, len, "=stdin");
        }
        if (r < 0) {
            saveline(line);
            return ST_CANCELLED;
        }
        lua_pushliteral(L, "\n");
        lua_insert(L, -2);
        lua_concat(L, 3);
    }
}

/* -1: no more input; ST_CANCELLED; otherwise a load status with the chunk or message on top */
static int loadline(lua_State *L) {
    lua_settop(L, 0);
    int r = pushline(L, 1);
    if (r == 0) return -1;
    if (r < 0) return ST_CANCELLED;
    int status = addreturn(L);
    if (status != LUA_OK) status = multiline(L);
    lua_remove(L, 1);
    if (status == ST_CANCELLED) lua_settop(L, 0);
    return status;
}

static void l_print(lua_State *L) {
    int n = lua_gettop(L);
    if (n > 0) {
        luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
        lua_getglobal(L, "print");
        lua_insert(L, 1);
        int status = docall(L, n, 0);
        if (status != LUA_OK) {
            const char *msg = lua_tostring(L, -1);
            l_message(progname, lua_pushfstring(L, "error calling 'print' (%s)", msg ? msg : "?"));
            lua_settop(L, 0);
        }
    }
}

static void repl_init(void) {
    g_tty = isatty(STDIN_FILENO);
    if (!g_tty) return;
    rl_readline_name = "medlua";
    rl_catch_signals = 0;
    rl_attempted_completion_function = medlua_complete;
    rl_completer_word_break_characters = (char *)" \t\n\"\\'><=;:+-*/%^~#{}()[].,&|";
    using_history();
    stifle_history(HISTORY_MAX);
    const char *home = getenv("HOME");
    g_history_path[0] = '\0';
    if (home && *home) {
        snprintf(g_history_path, sizeof g_history_path, "%s/%s", home, HISTORY_FILE);
        if (access(g_history_path, F_OK) != 0) {
            FILE *f = fopen(g_history_path, "a");
            if (f) fclose(f);
            else g_history_path[0] = '\0';
        }
        if (g_history_path[0]) read_history(g_history_path);
    }
}

static void repl_finish(void) {
    if (g_tty && g_history_path[0]) history_truncate_file(g_history_path, HISTORY_MAX);
    free_cands();
}

static void doREPL(lua_State *L) {
    const char *oldprogname = progname;
    progname = NULL;
    repl_init();
    int status;
    while ((status = loadline(L)) != -1) {
        if (status == ST_CANCELLED) continue;
        if (status == LUA_OK) status = docall(L, 0, LUA_MULTRET);
        if (status == LUA_OK) l_print(L);
        else report(L, status);
    }
    lua_settop(L, 0);
    repl_finish();
    progname = oldprogname;
}

/* ------------------------------------------------------------------ main */
static int pmain(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = (char **)lua_touserdata(L, 2);
    int script;
    if (argv[0] && argv[0][0]) progname = argv[0];
    int args = collectargs(argv, &script);
    int optlim = script > 0 ? script : argc;
    luaL_checkversion(L);
    if (args & has_error) {
        print_usage(argv[script] ? argv[script] : "?");
        return 0;
    }
    if (args & has_h) {
        print_usage(NULL);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (args & has_v) print_version();
    if (args & has_E) {
        lua_pushboolean(L, 1);
        lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    }
    luaL_openlibs(L);
    setup_library(L, args & has_E);
    createargtable(L, argv, argc, script);
    lua_gc(L, LUA_GCRESTART);
    if (load_medlua(L) != LUA_OK) return 0;
    if (!(args & has_E) && handle_init(L) != LUA_OK) return 0;
    if (!runargs(L, argv, optlim)) return 0;
    bool script_ok = true;
    if (script > 0) script_ok = handle_script(L, argv + script) == LUA_OK;
    if (args & has_i) {
        doREPL(L);
    } else if (!script_ok) {
        return 0;
    } else if (script < 1 && !(args & (has_e | has_v))) {
        if (isatty(STDIN_FILENO)) {
            print_version();
            doREPL(L);
        } else if (dofile(L, NULL) != LUA_OK) {
            return 0;
        }
    }
    lua_pushboolean(L, script_ok);
    return 1;
}

/* OpenMP threads that spin while waiting for work steal the cores from the thread that has work
 * whenever anything else runs on the machine (measured: a U-Net train step 3.4 s spinning vs 2.1 s
 * sleeping on a 2-core machine with a compiler running). libgomp reads OMP_WAIT_POLICY before main
 * runs, so when the user has not chosen, the program starts itself once more with "passive". */
static void default_wait_policy(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: then run as we are */
}

int main(int argc, char **argv) {
    static char *noargs[] = {(char *)"medlua", NULL};
    if (argc < 1 || !argv[0]) {
        argv = noargs;
        argc = 1;
    }
    default_wait_policy(argv);
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        l_message(argv[0], "cannot create state: not enough memory");
        return EXIT_FAILURE;
    }
    globalL = L;
    set_state(ST_OTHER);
    lua_gc(L, LUA_GCSTOP);
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status = lua_pcall(L, 2, 1, 0);
    int result = lua_toboolean(L, -1);
    report(L, status);
    lua_close(L);
    return (result && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}
