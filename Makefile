# medlua: one build. CPU always; CUDA objects when nvcc is found (CUDA=0 disables).
#   make            build build/medlua
#   make run        install missing packages, build, run the main job
#   make test       install, build, run every test; ends with "N passed, N failed"
#   make test SAN=1 the same under ASan/UBSan
#   make bench      side-by-side benchmarks against the peers (PyTorch CPU from PyPI)

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

# Core: every modules/*/*.c except the Lua bindings (*_lua.c)
CORE_SRC := $(filter-out %_lua.c,$(wildcard modules/*/*.c))
CXX_SRC := $(wildcard modules/*/*.cpp)
BIND_SRC := $(wildcard modules/*/*_lua.c)
HOST_SRC := $(wildcard host/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o) $(CXX_SRC:%.cpp=$(BUILD)/obj/%.o)
BIND_OBJ := $(BIND_SRC:%.c=$(BUILD)/obj/%.o)
HOST_OBJ := $(HOST_SRC:%.c=$(BUILD)/obj/%.o)
HEADERS := $(wildcard modules/*/*.h)

CTEST_SRC := $(wildcard tests/c/test_*.c)
CTEST_BIN := $(CTEST_SRC:tests/c/%.c=$(BUILD)/tests/%)

.PHONY: all deps run test test-c test-lua bench clean install fuzz
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

$(BUILD)/libmedlua.a: $(CORE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/medlua: $(HOST_OBJ) $(BIND_OBJ) $(BUILD)/libmedlua.a
	$(CC) $(LDSAN) -o $@ $(HOST_OBJ) $(BIND_OBJ) $(BUILD)/libmedlua.a $(LDLIBS) -Wl,-E

$(BUILD)/tests/%: tests/c/%.c tests/c/ml_test.h $(BUILD)/libmedlua.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/c -o $@ $< $(BUILD)/libmedlua.a $(LDLIBS) $(LDSAN)

run: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	$(BUILD)/medlua recipes/train_unet.lua

test: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all $(CTEST_BIN)
	@BUILD=$(BUILD) SAN=$(SAN) bash tests/run_all.sh

bench: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	@bash bench/run.sh

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
FUZZ_OBJ := $(CORE_SRC:%.c=$(FUZZ_BUILD)/obj/%.o) $(CXX_SRC:%.cpp=$(FUZZ_BUILD)/obj/%.o)

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
