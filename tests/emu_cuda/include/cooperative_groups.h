// The part of <cooperative_groups.h> the library's kernels use, for the emulated build (emu.h):
// the grid of a cooperative launch and the thread-block cluster.
#ifndef SPECNORM_EMU_COOPERATIVE_GROUPS_H
#define SPECNORM_EMU_COOPERATIVE_GROUPS_H

#include "../emu.h"

namespace cooperative_groups {

struct grid_group {
  void sync() const { emu::grid_sync(); }
  unsigned long long num_blocks() const {
    return (unsigned long long)gridDim.x * gridDim.y * gridDim.z;
  }
};
inline grid_group this_grid() { return {}; }

struct cluster_group {
  void sync() const {
    emu::cluster_arrive();
    emu::cluster_wait();
  }
  void barrier_arrive() const { emu::cluster_arrive(); }
  void barrier_wait() const { emu::cluster_wait(); }
  unsigned block_rank() const { return emu::cluster_rank(); }
  unsigned num_blocks() const { return emu::cluster_blocks(); }
  template <class T>
  T *map_shared_rank(T *p, int rank) const {
    return static_cast<T *>(emu::cluster_peer(p, (unsigned)rank));
  }
};
inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups

#endif
