// Reads kernels' registers, static shared memory and launch bounds from the cubins of a fat binary
// (tests/fake_cuda/fatbin.h). Everything is read with bounds checks through memcpy: the bytes
// come from the test binary itself, but a layout other than the expected one must give a problem
// report, not a crash.
#include "fatbin.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <set>

namespace fake_cuda {
namespace {

constexpr uint32_t kWrapperMagic = 0x466243b1u;  // __fatBinC_Wrapper_t
constexpr uint32_t kFatbinMagic = 0xba55ed50u;
constexpr uint16_t kKindCubin = 2;               // 1: PTX
constexpr uint8_t kAttrMaxThreads = 0x05;        // EIATTR_MAX_THREADS: x, y, z (.maxntid)
constexpr uint8_t kAttrFrameSize = 0x11;         // EIATTR_FRAME_SIZE: symbol, bytes
constexpr uint8_t kAttrRegCount = 0x2f;          // EIATTR_REGCOUNT: symbol, registers
constexpr uint8_t kFormatSized = 0x04;           // EIFMT_SVAL: a 16-bit size, then the value
constexpr size_t kReservedSmem = 1024;           // the driver's window at the start of an sm_90 block's

// A byte range that reads little-endian integers at offsets, failing (false) outside it.
struct Bytes {
  const unsigned char *p = nullptr;
  size_t n = 0;
  template <class T>
  bool get(size_t off, T *v) const {
    if (off > n || sizeof(T) > n - off) return false;
    std::memcpy(v, p + off, sizeof(T));
    return true;
  }
  Bytes sub(size_t off, size_t len) const {
    if (off > n || len > n - off) return Bytes{};
    return Bytes{p + off, len};
  }
  std::string cstr(size_t off) const {
    std::string s;
    while (off < n && p[off]) s.push_back((char)p[off++]);
    return s;
  }
};

struct Section {
  std::string name;
  uint32_t type = 0, info = 0;
  Bytes data;
  uint64_t size = 0;  // of the section (data is empty for NOBITS sections such as .nv.shared)
};

bool starts_with(const std::string &s, const char *prefix, std::string *rest) {
  const size_t k = std::strlen(prefix);
  if (s.compare(0, k, prefix) != 0) return false;
  *rest = s.substr(k);
  return true;
}

// The attributes of an .nv.info section: (attribute, value bytes) of every sized entry.
template <class F>
bool each_attribute(Bytes b, F f) {
  size_t off = 0;
  while (off + 4 <= b.n) {
    uint8_t format = 0, attr = 0;
    uint16_t size = 0;
    b.get(off, &format);
    b.get(off + 1, &attr);
    b.get(off + 2, &size);
    if (format == kFormatSized) {
      const Bytes v = b.sub(off + 4, size);
      if (v.p == nullptr && size) return false;
      f(attr, v);
      off += 4 + size;
    } else if (format >= 1 && format <= 3) {
      off += 4;  // no value, or one of 1 or 2 bytes within the entry
    } else {
      return false;
    }
  }
  return off == b.n;
}

// The sections of a 64-bit ELF file (a cubin, or an executable), named, each with its bytes in the
// file (none for NOBITS); false, with why, when the file is not one or a section lies outside it.
bool read_sections(Bytes elf, std::vector<Section> *secs, const char **why) {
  uint64_t shoff = 0;
  uint16_t shentsize = 0, shnum = 0, shstrndx = 0;
  if (elf.n < 64 || std::memcmp(elf.p, "\x7f" "ELF", 4) != 0 || elf.p[4] != 2)
    return *why = "not a 64-bit ELF file", false;
  elf.get(0x28, &shoff);
  elf.get(0x3a, &shentsize);
  elf.get(0x3c, &shnum);
  elf.get(0x3e, &shstrndx);
  if (shentsize < 64 || shstrndx >= shnum) return *why = "bad section headers", false;
  secs->assign(shnum, Section{});
  std::vector<uint32_t> name_off(shnum);
  for (uint16_t i = 0; i < shnum; ++i) {
    Section &sec = (*secs)[i];
    const size_t h = (size_t)shoff + (size_t)i * shentsize;
    uint64_t off = 0;
    if (!elf.get(h, &name_off[i]) || !elf.get(h + 4, &sec.type) || !elf.get(h + 0x18, &off) ||
        !elf.get(h + 0x20, &sec.size) || !elf.get(h + 0x2c, &sec.info))
      return *why = "section header out of the file", false;
    if (sec.type != 8) {  // 8: NOBITS (no bytes in the file)
      sec.data = elf.sub((size_t)off, (size_t)sec.size);
      if (sec.size && !sec.data.p) return *why = "a section out of the file", false;
    }
  }
  const Bytes names = (*secs)[shstrndx].data;
  for (uint16_t i = 0; i < shnum; ++i) (*secs)[i].name = names.cstr(name_off[i]);
  return true;
}

// The size of the fat binary image whose header starts `b` (header and entries), 0 when `b` does
// not start with one or is too short for it.
size_t image_size(Bytes b) {
  uint32_t magic = 0;
  uint16_t header = 0;
  uint64_t size = 0;
  if (!b.get(0, &magic) || !b.get(6, &header) || !b.get(8, &size) || magic != kFatbinMagic ||
      header < 16 || header > b.n || size > b.n - header)
    return 0;
  return header + (size_t)size;
}

void read_cubin(Bytes elf, int arch, FatbinCode *out) {
  char what[96];
  std::snprintf(what, sizeof what, "the sm_%d cubin", arch);
  auto problem = [&](const char *why) { out->problems.push_back(std::string(what) + ": " + why); };
  std::vector<Section> secs;
  const char *why = nullptr;
  if (!read_sections(elf, &secs, &why)) {
    problem(why);
    return;
  }

  // EIATTR_REGCOUNT and EIATTR_FRAME_SIZE in the global .nv.info, by symbol.
  std::map<uint32_t, int> regs_of_symbol, frame_of_symbol;
  for (const Section &s : secs)
    if (s.name == ".nv.info" &&
        !each_attribute(s.data, [&](uint8_t attr, Bytes v) {
          uint32_t sym = 0, value = 0;
          if (!v.get(0, &sym) || !v.get(4, &value)) return;
          if (attr == kAttrRegCount) regs_of_symbol[sym] = (int)value;
          if (attr == kAttrFrameSize) frame_of_symbol[sym] = (int)value;
        }))
      problem("unreadable .nv.info");

  std::map<std::string, KernelCode> code;
  std::set<std::string> kernels;  // those with code (.text.<name>)
  std::string fn;
  for (const Section &s : secs) {
    if (starts_with(s.name, ".text.", &fn)) {
      // sh_info: the kernel's symbol, and (up to sm_8x) its registers in the top byte.
      kernels.insert(fn);
      const auto frame = frame_of_symbol.find(s.info & 0xffffffu);
      if (frame != frame_of_symbol.end()) code[fn].frame = frame->second;
      const auto it = regs_of_symbol.find(s.info & 0xffffffu);
      code[fn].regs = it != regs_of_symbol.end() ? it->second : (int)(s.info >> 24);
      if (code[fn].regs < 1 || code[fn].regs > 255) {
        problem(("registers out of range for " + fn).c_str());
        code[fn].regs = 255;
      }
    } else if (starts_with(s.name, ".nv.shared.", &fn) && fn.compare(0, 9, "reserved.") != 0) {
      // From sm_90 on, a kernel's section begins with the 1 KB the driver reserves a block.
      size_t bytes = (size_t)s.size;
      if (arch >= 90 && bytes >= kReservedSmem) bytes -= kReservedSmem;
      code[fn].static_smem = bytes;
    } else if (starts_with(s.name, ".nv.info.", &fn)) {
      KernelCode &k = code[fn];
      if (!each_attribute(s.data, [&](uint8_t attr, Bytes v) {
            uint32_t x = 0, y = 0, z = 0;
            if (attr == kAttrMaxThreads && v.get(0, &x) && v.get(4, &y) && v.get(8, &z))
              k.max_threads = x >= 1 && y >= 1 && z >= 1 && x <= 1024 && y <= 1024 && z <= 64 &&
                                      (uint64_t)x * y * z <= 1024
                                  ? (int)(x * y * z)
                                  : -1;
          }))
        problem(("unreadable .nv.info." + fn).c_str());
    }
  }
  for (const std::string &k : kernels) {
    if (code[k].max_threads < 0) {
      problem(("launch bounds out of range for " + k).c_str());
      code[k].max_threads = 0;
    }
    code[k].arch = arch;
    out->by_arch[arch][k] = code[k];
  }
}

}  // namespace

size_t read_fatbin_image(const void *image, size_t avail, FatbinCode *out) {
  const Bytes b{static_cast<const unsigned char *>(image), avail};
  const size_t bytes = image_size(b);
  if (bytes == 0) {
    out->problems.push_back("a fat binary of an unknown layout");
    return 0;
  }
  uint16_t header = 0;
  b.get(6, &header);
  const Bytes all = b.sub(header, bytes - header);
  size_t off = 0;
  while (off < all.n) {
    uint16_t kind = 0;
    uint32_t entry_header = 0, arch = 0;
    uint64_t payload = 0;
    if (!all.get(off, &kind) || !all.get(off + 4, &entry_header) || !all.get(off + 8, &payload) ||
        !all.get(off + 28, &arch) || entry_header < 32 || entry_header > all.n - off ||
        payload > all.n - off - entry_header) {
      out->problems.push_back("a fat binary entry out of its bounds");
      break;
    }
    if (kind == kKindCubin) read_cubin(all.sub(off + entry_header, (size_t)payload), (int)arch, out);
    off += entry_header + payload;
  }
  return bytes;
}

void read_fatbin(const void *wrapper, FatbinCode *out) {
  uint32_t magic = 0;
  std::memcpy(&magic, wrapper, sizeof magic);
  const unsigned char *data = nullptr;
  std::memcpy(&data, (const char *)wrapper + 8, sizeof data);
  if (magic != kWrapperMagic || data == nullptr) {
    out->problems.push_back("a fat binary wrapper of an unknown layout");
    return;
  }
  // Its size is in its own header (the registered image lies in the executable's .nv_fatbin).
  read_fatbin_image(data, SIZE_MAX, out);
}

bool executable_fatbins(const char *path, FatbinImages *out, std::string *why) {
  out->section.clear();
  out->images.clear();
  std::FILE *f = std::fopen(path, "rb");
  if (!f) return *why = std::string("cannot open ") + path, false;
  std::vector<unsigned char> file;
  unsigned char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) file.insert(file.end(), buf, buf + n);
  std::fclose(f);
  std::vector<Section> secs;
  const char *bad = nullptr;
  if (!read_sections(Bytes{file.data(), file.size()}, &secs, &bad)) return *why = std::string(path) + ": " + bad, false;
  for (const Section &sec : secs) {
    if (sec.name != ".nv_fatbin") continue;
    const Bytes data = sec.data;
    out->section.assign((data.n + 7) / 8, 0);
    if (data.n) std::memcpy(out->section.data(), data.p, data.n);
    // The images one after another, each at an 8-byte boundary.
    const Bytes copy{reinterpret_cast<const unsigned char *>(out->section.data()), data.n};
    for (size_t at = 0; at + 16 <= copy.n;) {
      const size_t n = image_size(copy.sub(at, copy.n - at));
      if (n == 0) {
        at += 8;
        continue;
      }
      out->images.emplace_back(at, n);
      at += (n + 7) / 8 * 8;
    }
    return true;
  }
  return *why = std::string(path) + " has no .nv_fatbin section", false;
}

const std::map<std::string, KernelCode> *cubin_for(const FatbinCode &code, int major, int minor) {
  for (int m = minor; m >= 0; --m) {
    const auto it = code.by_arch.find(major * 10 + m);
    if (it != code.by_arch.end()) return &it->second;
  }
  return nullptr;
}

int max_threads(const KernelCode &k) {
  // Registers are given a warp in units of 256, out of each of the 4 sub-partitions' 16,384.
  const int per_warp = (k.regs * 32 + 255) / 256 * 256;
  const int by_regs = per_warp > 0 ? 4 * (16384 / per_warp) * 32 : 1024;
  return std::min({1024, by_regs, k.max_threads > 0 ? k.max_threads : 1024});
}

}  // namespace fake_cuda
