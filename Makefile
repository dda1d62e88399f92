# medlua: one build. CPU always; CUDA objects when nvcc is found (CUDA=0 disables).
#   make            build build/medlua
#   make run        install missing packages, build, run the main job
#   make test       install, build, run every test; ends with "N passed, N failed"
#   make test SAN=1 the same under ASan/UBSan
#   make test-gpu   the GPU suites (tests/gpu/*.lua); says "gpu tests: skipped (why)" without a GPU
#   make CUDA=0     a CPU-only build (ml_cuda_stub.c: "built without CUDA"); CUDA=1 forces nvcc
#   make bench      side-by-side benchmarks against the peers (PyTorch CPU from PyPI)
#   make bench-gpu  the U-Net train step on a GPU against PyTorch + cuDNN (says why it skips without one)

SHELL := /bin/bash
CC ?= gcc
SAN ?= 0
BUILD ?= build
ifeq ($(SAN),1)
  BUILD := build-san
endif

DEB_PKGS := libdnnl-dev liblua5.4-dev libcjson-dev libreadline-dev pkg-config \
  libnifti2-dev libdcmtk-dev libopenjp2-7-dev libstb-dev libdeflate-dev zlib1g-dev \
  python3-nibabel python3-pydicom dcm2niix

OPT := -O3 -march=native -fno-math-errno
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -fopenmp -fPIC -g \
  $(shell pkg-config --cflags lua5.4 2>/dev/null) -I/usr/include/lua5.4 -Imodules
CXXFLAGS_BASE := -std=c++17 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC -g -Imodules \
  $(shell pkg-config --cflags libopenjp2 2>/dev/null)
ifeq ($(SAN),1)
  CFLAGS := $(CFLAGS_BASE) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  CXXFLAGS := $(CXXFLAGS_BASE) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDSAN := -fsanitize=address,undefined
else
  CFLAGS := $(CFLAGS_BASE) $(OPT)
  CXXFLAGS := $(CXXFLAGS_BASE) -O2
  LDSAN :=
endif
CXX ?= g++
DCMTK_LIBS := -ldcmjpls -ldcmjpeg -ldcmimage -ldcmimgle -ldcmdata -loflog -lofstd -ldcmtkcharls -lijg8 -lijg12 -lijg16
LDLIBS := -lniftiio -lznz $(DCMTK_LIBS) -lopenjp2 -ldeflate -lz -lstdc++ -ldnnl -lcjson $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) -lreadline -lm -lpthread -fopenmp

# CUDA ?= auto: 1 when nvcc is found (on PATH, or $(CUDA_HOME)/bin/nvcc), else 0. Under SAN=1 auto
# means 0: ASan reserves the address range the CUDA driver maps for unified addressing (cuInit fails
# on GPU machines unless ASAN_OPTIONS=protect_shadow_gap=0) and LeakSanitizer reports the driver's
# never-freed allocations. `make test SAN=1 CUDA=1` still builds it (set that ASAN_OPTIONS on a GPU).
# CUDA=1: modules/cuda/*.cu go through nvcc into the same libmedlua.a, the CUDA-only C files of
# modules/cuda are compiled, and everything links the CUDA runtime statically (libcudart_static.a:
# the program starts without libcudart.so and without a driver). cuBLAS/cuDNN are dlopen()ed at run
# time, never linked. CUDA=0: ml_cuda_stub.c instead. The value is recorded in $(BUILD)/config.stamp;
# changing it rebuilds the library and relinks.
CUDA ?= auto
CUDA_NVCC_PATH := $(shell command -v nvcc 2>/dev/null)
CUDA_HOME ?= $(if $(CUDA_NVCC_PATH),$(patsubst %/bin/,%,$(dir $(realpath $(CUDA_NVCC_PATH)))),/usr/local/cuda)
NVCC ?= $(or $(CUDA_NVCC_PATH),$(wildcard $(CUDA_HOME)/bin/nvcc))
ifeq ($(CUDA),auto)
  ifeq ($(SAN),1)
    override CUDA := 0
  else ifneq ($(NVCC),)
    override CUDA := 1
  else
    override CUDA := 0
  endif
endif
ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was found neither on PATH nor at $(CUDA_HOME)/bin/nvcc)
  endif
endif
CUDA_LIBDIR ?= $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/targets/x86_64-linux/lib) $(CUDA_HOME)/lib64)
# SASS for sm_80 (A100; runs on sm_86/sm_89 too) and sm_90 (H100/H200), PTX for compute_90 so newer
# GPUs JIT it. ml_cuda_runtime.c's ML_CUDA_MIN_CC (80) must match the oldest SASS here.
NVCC_GENCODE ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]
NVCC_FLAGS := -O2 -std=c++17 --compiler-options -fPIC,-Wall -Imodules -Imodules/tensor -Imodules/cuda \
  $(NVCC_GENCODE) $(NVCC_EXTRA)

# modules/cuda/*.c: ml_cuda_stub.c only without CUDA; the files in CUDA_PORTABLE_SRC (plain C, no CUDA
# header) and the bindings (*_lua.c) in every build; every other .c there only with CUDA=1.
CUDA_STUB_SRC := modules/cuda/ml_cuda_stub.c
CUDA_PORTABLE_SRC := modules/cuda/ml_cuda_alloc.c
CUDA_ONLY_SRC := $(filter-out $(CUDA_STUB_SRC) $(CUDA_PORTABLE_SRC) %_lua.c,$(wildcard modules/cuda/*.c))
CU_SRC := $(wildcard modules/cuda/*.cu)

# Core: every modules/*/*.c except the Lua bindings (*_lua.c), filtered as above
CORE_SRC_ALL := $(filter-out %_lua.c,$(wildcard modules/*/*.c))
CORE_SRC_NOCUDA := $(filter-out $(CUDA_ONLY_SRC),$(CORE_SRC_ALL))
ifeq ($(CUDA),1)
  CORE_SRC := $(filter-out $(CUDA_STUB_SRC),$(CORE_SRC_ALL))
  CU_OBJ := $(CU_SRC:%.cu=$(BUILD)/obj/%.cu.o)
  LDLIBS += -L$(CUDA_LIBDIR) -lcudart_static -ldl -lrt -lpthread
else
  CORE_SRC := $(CORE_SRC_NOCUDA)
  CU_OBJ :=
endif
CONFIG_STAMP := $(BUILD)/config.stamp
CONFIG_LINE := CUDA=$(CUDA) NVCC=$(NVCC) CUDA_HOME=$(CUDA_HOME) GENCODE=$(NVCC_GENCODE)
CXX_SRC := $(wildcard modules/*/*.cpp)
BIND_SRC := $(wildcard modules/*/*_lua.c)
HOST_SRC := $(wildcard host/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o) $(CXX_SRC:%.cpp=$(BUILD)/obj/%.o) $(CU_OBJ)
BIND_OBJ := $(BIND_SRC:%.c=$(BUILD)/obj/%.o)
HOST_OBJ := $(HOST_SRC:%.c=$(BUILD)/obj/%.o)
HEADERS := $(wildcard modules/*/*.h)

CTEST_SRC := $(wildcard tests/c/test_*.c)
CTEST_BIN := $(CTEST_SRC:tests/c/%.c=$(BUILD)/tests/%)

.PHONY: all deps run test test-c test-lua test-gpu bench bench-gpu clean install fuzz FORCE
all: $(BUILD)/medlua

# Install missing Debian packages (root on CI; otherwise sudo if present).
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(CUDA_ONLY_SRC:%.c=$(BUILD)/obj/%.o): CFLAGS += -I$(CUDA_HOME)/include

# Rewritten only when the configuration changed, so only then does it make the library newer.
$(CONFIG_STAMP): FORCE
	@mkdir -p $(dir $@); [ "$$(cat $@ 2>/dev/null)" = "$(CONFIG_LINE)" ] || echo "$(CONFIG_LINE)" > $@
FORCE:

$(BUILD)/libmedlua.a: $(CORE_OBJ) $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(BUILD)/medlua: $(HOST_OBJ) $(BIND_OBJ) $(BUILD)/libmedlua.a
	$(CC) $(LDSAN) -o $@ $(HOST_OBJ) $(BIND_OBJ) $(BUILD)/libmedlua.a $(LDLIBS) -Wl,-E

# The host-emulated CUDA device (tests/fakecuda/ml_cuda_fake.c) linked ahead of the library: the same
# program, whose "device" is host memory at addresses no CPU kernel can read, so make test runs
# tests/gpu/*.lua in CI through every device path above the kernels (dispatch, gate, transfers, autograd).
FAKECUDA_OBJ := $(BUILD)/obj/tests/fakecuda/ml_cuda_fake.o
$(BUILD)/medlua-fakecuda: $(HOST_OBJ) $(BIND_OBJ) $(FAKECUDA_OBJ) $(BUILD)/libmedlua.a
	$(CC) $(LDSAN) -o $@ $(HOST_OBJ) $(BIND_OBJ) $(FAKECUDA_OBJ) $(BUILD)/libmedlua.a $(LDLIBS) -Wl,-E

$(BUILD)/tests/%: tests/c/%.c tests/c/ml_test.h $(BUILD)/libmedlua.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/c -o $@ $< $(BUILD)/libmedlua.a $(LDLIBS) $(LDSAN)

run: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	$(BUILD)/medlua recipes/train_unet.lua

# tests/gpu/host_check.cu: the CUDA kernels' shared host+device code (conversions, iteration, the op
# table, reduction orders) run on the host against the CPU; needs nvcc, no GPU (CUDA=1 builds only)
ifeq ($(CUDA),1)
  HOSTCHECK_BIN := $(BUILD)/tests/gpu_host_check
endif
$(BUILD)/tests/gpu_host_check: tests/gpu/host_check.cu tests/gpu/check_common.h $(BUILD)/libmedlua.a $(wildcard modules/cuda/*.cu modules/cuda/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -std=c++17 -Imodules -Imodules/tensor -Imodules/cuda -Xcompiler -fopenmp $< -o $@ \
	  $(BUILD)/libmedlua.a $(filter-out -fopenmp,$(LDLIBS)) -Xcompiler -fopenmp -lgomp

test: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all $(CTEST_BIN) $(BUILD)/medlua-fakecuda $(HOSTCHECK_BIN)
	@BUILD=$(BUILD) SAN=$(SAN) bash tests/run_all.sh

# GPU suites: tests/gpu/*.lua run with $(BUILD)/medlua when a usable GPU exists. Whether one does is
# asked of the program (medlua.cuda.available()/status()); a program without those bindings is
# answered by `$(BUILD)/tests/test_cuda_runtime --status` (exit 0: available; else prints why).
test-gpu: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all $(BUILD)/tests/test_cuda_runtime
	@why=$$($(BUILD)/medlua -e 'local c = rawget(_G, "medlua") and medlua.cuda; if not (c and c.available and c.status) then os.exit(3) end; if c.available() then os.exit(0) end; io.write(c.status()); os.exit(2)' 2>/dev/null); rc=$$?; \
	if [ $$rc != 0 ] && [ $$rc != 2 ]; then why=$$($(BUILD)/tests/test_cuda_runtime --status 2>/dev/null); rc=$$?; fi; \
	if [ $$rc != 0 ]; then echo "gpu tests: skipped ($${why:-CUDA not available})"; exit 0; fi; \
	shopt -s nullglob; tests=(tests/gpu/*.lua); \
	if [ $${#tests[@]} = 0 ]; then echo "gpu tests: skipped (no tests/gpu/*.lua)"; exit 0; fi; \
	mkdir -p $(BUILD)/test-logs/gpu; tp=0; tf=0; \
	for t in "$${tests[@]}"; do n=$$(basename $$t .lua); log=$(BUILD)/test-logs/gpu/$$n.log; s=$$SECONDS; \
	  $(BUILD)/medlua $$t >$$log 2>&1; rc=$$?; \
	  line=$$(grep -E '^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' $$log | tail -n 1); \
	  p=$$(sed -E 's/^([A-Za-z]+: )?([0-9]+) passed.*/\2/' <<<"$$line"); f=$$(sed -E 's/^([A-Za-z]+: )?[0-9]+ passed, ([0-9]+) failed.*/\2/' <<<"$$line"); \
	  p=$${p:-0}; f=$${f:-0}; if [ -z "$$line" ] || { [ $$rc != 0 ] && [ $$f = 0 ]; }; then f=$$((f + 1)); echo "  gpu/$$n: exited with status $$rc without a clean summary"; fi; \
	  tp=$$((tp + p)); tf=$$((tf + f)); printf '%-32s %4d passed, %3d failed  (%ds)\n' "gpu/$$n" $$p $$f $$((SECONDS - s)); \
	  if [ $$f != 0 ]; then grep -E '^(FAIL|     )' $$log | head -n 20 | sed 's/^/    /'; tail -n 5 $$log | sed 's/^/    | /'; fi; \
	done; echo "$$tp passed, $$tf failed"; [ $$tf = 0 ]

bench: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	@bash bench/run.sh

bench-gpu: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	@bash bench/bench_gpu.sh

clean:
	rm -rf build build-san

# libFuzzer targets (fuzz/fuzz_*.c): the core built again with clang, ASan and UBSan.
#   make fuzz                 build and run each target for FUZZ_TIME seconds (default 600)
#   make fuzz FUZZ_TIME=60    a shorter run; crashers land in fuzz/crashers_<name>/
FUZZ_TIME ?= 600
FUZZ_BUILD := build-fuzz
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fopenmp -fsanitize=fuzzer-no-link,address,undefined -Imodules \
  -I/usr/include/lua5.4 $(shell pkg-config --cflags libopenjp2 2>/dev/null)
FUZZ_CXXFLAGS := -std=c++17 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize=vptr -Imodules \
  $(shell pkg-config --cflags libopenjp2 2>/dev/null)
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_OBJ := $(CORE_SRC_NOCUDA:%.c=$(FUZZ_BUILD)/obj/%.o) $(CXX_SRC:%.cpp=$(FUZZ_BUILD)/obj/%.o)

$(FUZZ_BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/obj/%.o: %.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	clang++ $(FUZZ_CXXFLAGS) -c $< -o $@

$(FUZZ_BUILD)/%: fuzz/%.c $(FUZZ_OBJ)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) $(LDLIBS)

fuzz: deps
	@command -v clang >/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; $$SUDO apt-get install -y -qq clang >/dev/null; }
	@$(MAKE) --no-print-directory -j$$(nproc) $(FUZZ_BIN)
	@for b in $(FUZZ_BIN); do n=$$(basename $$b); n=$${n#fuzz_}; \
	  mkdir -p fuzz/corpus_$$n fuzz/crashers_$$n $(FUZZ_BUILD)/corpus_$$n; \
	  echo "fuzzing $$n for $(FUZZ_TIME) s"; \
	  $$b -max_total_time=$(FUZZ_TIME) -artifact_prefix=fuzz/crashers_$$n/ -print_final_stats=1 \
	    $(FUZZ_BUILD)/corpus_$$n fuzz/corpus_$$n 2>&1 | grep -E "^(stat::number_of_executed_units|Done|==|SUMMARY)" ; \
	done
