// The norm CUDA kernels and launchers compiled as host C++ against the CPU execution model
// (csrc/emu/cuda_emu.h) for the cuda_emu backend; built only with FASTGEN_CUDA_EMU=1.
#include "cuda/norm.cu"
