// Insert into and erase from a Linux red-black tree (lib/rbtree.c) that lives in guest memory,
// from the host, with the kernel's own recolouring and rotations. hvpatch uses it on the two
// copies of the latched module tree (`mod_tree`, include/linux/rbtree_latch.h) inside a pause,
// where a module load would call rb_insert_color / rb_erase.
//
// A node is a `struct rb_node` at a guest address: __rb_parent_color (the parent's address with
// the colour in bit 0: 0 red, 1 black), rb_right, rb_left, at offsets taken from BTF. The root is
// a `struct rb_root`: one pointer. The guest is hostile: every walk is bounded (a tree deeper than
// kMaxDepth, or a node whose links disagree, is refused) and no write happens through a pointer
// that was not read from the tree.
#pragma once

#include <cstdint>
#include <functional>

#include "base/status.h"
#include "patcher/kernel_words.h"

namespace hv::patcher {

struct RbNodeLayout {
  std::uint64_t parent_color = 0;
  std::uint64_t right = 8;
  std::uint64_t left = 16;
};

class RbTreeWriter {
 public:
  // A red-black tree of 2^64 nodes is at most 128 deep; anything deeper is a corrupt tree.
  static constexpr int kMaxDepth = 128;

  // `root_va`: the address of the struct rb_root.
  RbTreeWriter(KernelWords& mem, std::uint64_t root_va, RbNodeLayout layout = {})
      : mem_(mem), root_(root_va), l_(layout) {}

  // Links `node` (its three words are overwritten) as rb_link_node + rb_insert_color do, after a
  // descent that goes left when less(node, other) holds, right otherwise (latch_tree_insert's).
  // `less` may read guest memory and fail.
  // Errors: memory errors; kFailedPrecondition for a tree deeper than kMaxDepth or `node`
  // already in it.
  using Less = std::function<Result<bool>(std::uint64_t a, std::uint64_t b)>;
  Status Insert(std::uint64_t node, const Less& less);

  // Removes `node` as rb_erase does. Errors: memory errors; kFailedPrecondition when `node` is
  // not reachable from the root by its parent links (not in this tree), or the tree is corrupt.
  Status Erase(std::uint64_t node);

  // In-order list of the nodes (for checks and tests). Errors as above.
  Result<std::vector<std::uint64_t>> InOrder();

 private:
  Result<std::uint64_t> Pc(std::uint64_t n) { return mem_.Read64(n + l_.parent_color); }
  Result<std::uint64_t> Left(std::uint64_t n) { return mem_.Read64(n + l_.left); }
  Result<std::uint64_t> Right(std::uint64_t n) { return mem_.Read64(n + l_.right); }
  Status SetPc(std::uint64_t n, std::uint64_t v) { return mem_.Write64(n + l_.parent_color, v); }
  Status SetLeft(std::uint64_t n, std::uint64_t v) { return mem_.Write64(n + l_.left, v); }
  Status SetRight(std::uint64_t n, std::uint64_t v) { return mem_.Write64(n + l_.right, v); }
  Result<std::uint64_t> Parent(std::uint64_t n);
  Result<bool> IsRed(std::uint64_t n);  // a null node is black
  Status SetParentColor(std::uint64_t n, std::uint64_t parent, std::uint64_t color);
  Status SetParent(std::uint64_t n, std::uint64_t parent);
  Status ChangeChild(std::uint64_t old_node, std::uint64_t new_node, std::uint64_t parent);
  Status RotateSetParents(std::uint64_t old_node, std::uint64_t new_node, std::uint64_t color);
  Status InsertColor(std::uint64_t node);
  Status EraseColor(std::uint64_t parent);

  KernelWords& mem_;
  std::uint64_t root_;
  RbNodeLayout l_;
};

}  // namespace hv::patcher
