# External test dependencies come from the system, never from copied sources:
#   GoogleTest: Debian's libgtest-dev (GTestConfig.cmake), or any prefix in CMAKE_PREFIX_PATH
#   LAPACKE:    Debian's liblapacke-dev, through FindLAPACKE.cmake beside this file
# .ci/run installs both on a fresh Debian machine; scripts/fetch_gpu_deps.sh unpacks them into
# .deps/ for the GPU machine, which has no package manager.
find_package(GTest REQUIRED)
find_package(LAPACKE REQUIRED)
