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
  libnifti2-dev libdcmtk-dev libopenjp2-7-dev libstb-dev libdeflate-dev zlib1g-dev

OPT := -O3 -march=native -fno-math-errno
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -fopenmp -fPIC -g \
  $(shell pkg-config --cflags lua5.4 2>/dev/null) -I/usr/include/lua5.4 -Imodules
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
CXXFLAGS_BASE := -std=c++17 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC -g -Imodules \
  $(shell pkg-config --cflags libopenjp2 2>/dev/null)
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

.PHONY: all deps run test test-c test-lua bench clean install
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
	$(BUILD)/medlua recipes/demo_train.lua

test: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all $(CTEST_BIN)
	@BUILD=$(BUILD) SAN=$(SAN) bash tests/run_all.sh

bench: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	@bash bench/run.sh

clean:
	rm -rf build build-san
