#include "patcher/rbtree_writer.h"

#include <vector>

#include "base/hex.h"

namespace hv::patcher {
namespace {

constexpr std::uint64_t kRed = 0;
constexpr std::uint64_t kBlack = 1;

std::uint64_t ParentOf(std::uint64_t pc) { return pc & ~std::uint64_t{3}; }

Status TooDeep() {
  return FailedPrecondition("red-black tree deeper than " + std::to_string(RbTreeWriter::kMaxDepth) +
                            " levels: corrupt or cyclic");
}

}  // namespace

Result<std::uint64_t> RbTreeWriter::Parent(std::uint64_t n) {
  HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(n));
  return ParentOf(pc);
}

Result<bool> RbTreeWriter::IsRed(std::uint64_t n) {
  if (n == 0) return false;
  HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(n));
  return (pc & 1) == kRed;
}

Status RbTreeWriter::SetParentColor(std::uint64_t n, std::uint64_t parent, std::uint64_t color) {
  return SetPc(n, parent | color);
}

Status RbTreeWriter::SetParent(std::uint64_t n, std::uint64_t parent) {
  HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(n));
  return SetPc(n, (pc & 1) | parent);
}

// __rb_change_child: `parent`'s link to `old_node` (or the root's) now names `new_node`.
Status RbTreeWriter::ChangeChild(std::uint64_t old_node, std::uint64_t new_node, std::uint64_t parent) {
  if (parent == 0) return mem_.Write64(root_, new_node);
  HV_ASSIGN_OR_RETURN(std::uint64_t left, Left(parent));
  if (left == old_node) return SetLeft(parent, new_node);
  HV_ASSIGN_OR_RETURN(std::uint64_t right, Right(parent));
  if (right != old_node) {
    return FailedPrecondition("red-black tree node " + Hex(parent) + " is not the parent of " + Hex(old_node) +
                              ": corrupt tree");
  }
  return SetRight(parent, new_node);
}

// __rb_rotate_set_parents: `new_node` takes `old_node`'s place (parent and colour); `old_node`
// becomes its child with `color`.
Status RbTreeWriter::RotateSetParents(std::uint64_t old_node, std::uint64_t new_node, std::uint64_t color) {
  HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(old_node));
  HV_RETURN_IF_ERROR(SetPc(new_node, pc));
  HV_RETURN_IF_ERROR(SetParentColor(old_node, new_node, color));
  return ChangeChild(old_node, new_node, ParentOf(pc));
}

Status RbTreeWriter::Insert(std::uint64_t node, const Less& less) {
  if (node == 0 || node % 8 != 0) return InvalidArgument("red-black tree node " + Hex(node) + " is not aligned");
  std::uint64_t parent = 0;
  std::uint64_t link = root_;  // the address of the pointer that will name `node`
  HV_ASSIGN_OR_RETURN(std::uint64_t cur, mem_.Read64(root_));
  for (int depth = 0; cur != 0; ++depth) {
    if (depth >= kMaxDepth) return TooDeep();
    if (cur == node) return FailedPrecondition("node " + Hex(node) + " is already in the red-black tree");
    parent = cur;
    HV_ASSIGN_OR_RETURN(bool go_left, less(node, cur));
    link = cur + (go_left ? l_.left : l_.right);
    HV_ASSIGN_OR_RETURN(cur, mem_.Read64(link));
  }
  // rb_link_node: a red leaf under `parent`.
  HV_RETURN_IF_ERROR(SetPc(node, parent));
  HV_RETURN_IF_ERROR(SetLeft(node, 0));
  HV_RETURN_IF_ERROR(SetRight(node, 0));
  HV_RETURN_IF_ERROR(mem_.Write64(link, node));
  return InsertColor(node);
}

// lib/rbtree.c __rb_insert, without the augment callback.
Status RbTreeWriter::InsertColor(std::uint64_t node) {
  HV_ASSIGN_OR_RETURN(std::uint64_t parent, Parent(node));  // `node` is red: its pc is the parent
  for (int step = 0;; ++step) {
    if (step > 2 * kMaxDepth) return TooDeep();
    if (parent == 0) return SetParentColor(node, 0, kBlack);  // the root is black
    HV_ASSIGN_OR_RETURN(bool parent_red, IsRed(parent));
    if (!parent_red) return Status::Ok();
    HV_ASSIGN_OR_RETURN(std::uint64_t gparent, Parent(parent));  // a red node is never the root
    if (gparent == 0) return FailedPrecondition("red-black tree has a red root: corrupt tree");
    HV_ASSIGN_OR_RETURN(std::uint64_t tmp, Right(gparent));
    const bool parent_is_left = parent != tmp;
    if (!parent_is_left) {
      HV_ASSIGN_OR_RETURN(tmp, Left(gparent));
    }
    // tmp is the uncle.
    HV_ASSIGN_OR_RETURN(bool uncle_red, IsRed(tmp));
    if (uncle_red) {
      // Case 1: recolour, and go on from the grandparent.
      HV_RETURN_IF_ERROR(SetParentColor(tmp, gparent, kBlack));
      HV_RETURN_IF_ERROR(SetParentColor(parent, gparent, kBlack));
      node = gparent;
      HV_ASSIGN_OR_RETURN(parent, Parent(node));
      HV_RETURN_IF_ERROR(SetParentColor(node, parent, kRed));
      continue;
    }
    if (parent_is_left) {
      HV_ASSIGN_OR_RETURN(tmp, Right(parent));
      if (node == tmp) {
        // Case 2: left rotate at parent.
        HV_ASSIGN_OR_RETURN(tmp, Left(node));
        HV_RETURN_IF_ERROR(SetRight(parent, tmp));
        HV_RETURN_IF_ERROR(SetLeft(node, parent));
        if (tmp != 0) HV_RETURN_IF_ERROR(SetParentColor(tmp, parent, kBlack));
        HV_RETURN_IF_ERROR(SetParentColor(parent, node, kRed));
        parent = node;
        HV_ASSIGN_OR_RETURN(tmp, Right(node));
      } else {
        HV_ASSIGN_OR_RETURN(tmp, Right(parent));
      }
      // Case 3: right rotate at gparent.
      HV_RETURN_IF_ERROR(SetLeft(gparent, tmp));
      HV_RETURN_IF_ERROR(SetRight(parent, gparent));
      if (tmp != 0) HV_RETURN_IF_ERROR(SetParentColor(tmp, gparent, kBlack));
      return RotateSetParents(gparent, parent, kRed);
    }
    HV_ASSIGN_OR_RETURN(tmp, Left(parent));
    if (node == tmp) {
      // Case 2 (mirrored): right rotate at parent.
      HV_ASSIGN_OR_RETURN(tmp, Right(node));
      HV_RETURN_IF_ERROR(SetLeft(parent, tmp));
      HV_RETURN_IF_ERROR(SetRight(node, parent));
      if (tmp != 0) HV_RETURN_IF_ERROR(SetParentColor(tmp, parent, kBlack));
      HV_RETURN_IF_ERROR(SetParentColor(parent, node, kRed));
      parent = node;
      HV_ASSIGN_OR_RETURN(tmp, Left(node));
    } else {
      HV_ASSIGN_OR_RETURN(tmp, Left(parent));
    }
    // Case 3 (mirrored): left rotate at gparent.
    HV_RETURN_IF_ERROR(SetRight(gparent, tmp));
    HV_RETURN_IF_ERROR(SetLeft(parent, gparent));
    if (tmp != 0) HV_RETURN_IF_ERROR(SetParentColor(tmp, gparent, kBlack));
    return RotateSetParents(gparent, parent, kRed);
  }
}

Status RbTreeWriter::Erase(std::uint64_t node) {
  // The node must be in this tree: its parent chain ends at the root pointer.
  {
    std::uint64_t n = node;
    for (int depth = 0;; ++depth) {
      if (depth > kMaxDepth) return TooDeep();
      HV_ASSIGN_OR_RETURN(std::uint64_t p, Parent(n));
      if (p == 0) {
        HV_ASSIGN_OR_RETURN(std::uint64_t root, mem_.Read64(root_));
        if (root != n) return FailedPrecondition("node " + Hex(node) + " is not in the red-black tree at " + Hex(root_));
        break;
      }
      HV_ASSIGN_OR_RETURN(std::uint64_t pl, Left(p));
      HV_ASSIGN_OR_RETURN(std::uint64_t pr, Right(p));
      if (pl != n && pr != n) return FailedPrecondition("node " + Hex(node) + " is not in the red-black tree at " + Hex(root_));
      n = p;
    }
  }

  // lib/rbtree.c __rb_erase_augmented, without the augment callbacks.
  HV_ASSIGN_OR_RETURN(std::uint64_t child, Right(node));
  HV_ASSIGN_OR_RETURN(std::uint64_t tmp, Left(node));
  std::uint64_t rebalance = 0;
  if (tmp == 0) {
    // At most one child, on the right.
    HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(node));
    const std::uint64_t parent = ParentOf(pc);
    HV_RETURN_IF_ERROR(ChangeChild(node, child, parent));
    if (child != 0) {
      HV_RETURN_IF_ERROR(SetPc(child, pc));
    } else if ((pc & 1) == kBlack) {
      rebalance = parent;
    }
  } else if (child == 0) {
    // One child, on the left.
    HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(node));
    HV_RETURN_IF_ERROR(SetPc(tmp, pc));
    HV_RETURN_IF_ERROR(ChangeChild(node, tmp, ParentOf(pc)));
  } else {
    std::uint64_t successor = child;
    std::uint64_t parent;
    std::uint64_t child2;
    HV_ASSIGN_OR_RETURN(tmp, Left(child));
    if (tmp == 0) {
      // The successor is the right child.
      parent = successor;
      HV_ASSIGN_OR_RETURN(child2, Right(successor));
    } else {
      // The successor is the leftmost node under the right child.
      int depth = 0;
      do {
        if (++depth > kMaxDepth) return TooDeep();
        parent = successor;
        successor = tmp;
        HV_ASSIGN_OR_RETURN(tmp, Left(tmp));
      } while (tmp != 0);
      HV_ASSIGN_OR_RETURN(child2, Right(successor));
      HV_RETURN_IF_ERROR(SetLeft(parent, child2));
      HV_RETURN_IF_ERROR(SetRight(successor, child));
      HV_RETURN_IF_ERROR(SetParent(child, successor));
    }
    HV_ASSIGN_OR_RETURN(tmp, Left(node));
    HV_RETURN_IF_ERROR(SetLeft(successor, tmp));
    HV_RETURN_IF_ERROR(SetParent(tmp, successor));
    HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(node));
    HV_RETURN_IF_ERROR(ChangeChild(node, successor, ParentOf(pc)));
    if (child2 != 0) {
      HV_RETURN_IF_ERROR(SetParentColor(child2, parent, kBlack));
    } else {
      HV_ASSIGN_OR_RETURN(bool succ_red, IsRed(successor));
      if (!succ_red) rebalance = parent;
    }
    HV_RETURN_IF_ERROR(SetPc(successor, pc));
  }
  if (rebalance != 0) return EraseColor(rebalance);
  return Status::Ok();
}

// lib/rbtree.c ____rb_erase_color, without the augment rotate callback.
Status RbTreeWriter::EraseColor(std::uint64_t parent) {
  std::uint64_t node = 0;
  for (int step = 0;; ++step) {
    if (step > 2 * kMaxDepth) return TooDeep();
    HV_ASSIGN_OR_RETURN(std::uint64_t sibling, Right(parent));
    if (node != sibling) {  // node is the left child
      HV_ASSIGN_OR_RETURN(bool sib_red, IsRed(sibling));
      if (sib_red) {
        // Case 1: left rotate at parent.
        HV_ASSIGN_OR_RETURN(std::uint64_t tmp1, Left(sibling));
        HV_RETURN_IF_ERROR(SetRight(parent, tmp1));
        HV_RETURN_IF_ERROR(SetLeft(sibling, parent));
        if (tmp1 == 0) return FailedPrecondition("red-black tree violates its colour rules: corrupt tree");
        HV_RETURN_IF_ERROR(SetParentColor(tmp1, parent, kBlack));
        HV_RETURN_IF_ERROR(RotateSetParents(parent, sibling, kRed));
        sibling = tmp1;
      }
      if (sibling == 0) return FailedPrecondition("red-black tree violates its colour rules: corrupt tree");
      HV_ASSIGN_OR_RETURN(std::uint64_t tmp1, Right(sibling));
      HV_ASSIGN_OR_RETURN(bool tmp1_red, IsRed(tmp1));
      if (!tmp1_red) {
        HV_ASSIGN_OR_RETURN(std::uint64_t tmp2, Left(sibling));
        HV_ASSIGN_OR_RETURN(bool tmp2_red, IsRed(tmp2));
        if (!tmp2_red) {
          // Case 2: sibling colour flip.
          HV_RETURN_IF_ERROR(SetParentColor(sibling, parent, kRed));
          HV_ASSIGN_OR_RETURN(bool parent_red, IsRed(parent));
          if (parent_red) {
            HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(parent));
            return SetPc(parent, pc | kBlack);
          }
          node = parent;
          HV_ASSIGN_OR_RETURN(parent, Parent(node));
          if (parent != 0) continue;
          return Status::Ok();
        }
        // Case 3: right rotate at sibling.
        HV_ASSIGN_OR_RETURN(tmp1, Right(tmp2));
        HV_RETURN_IF_ERROR(SetLeft(sibling, tmp1));
        HV_RETURN_IF_ERROR(SetRight(tmp2, sibling));
        HV_RETURN_IF_ERROR(SetRight(parent, tmp2));
        if (tmp1 != 0) HV_RETURN_IF_ERROR(SetParentColor(tmp1, sibling, kBlack));
        tmp1 = sibling;
        sibling = tmp2;
      }
      // Case 4: left rotate at parent, colour flips.
      HV_ASSIGN_OR_RETURN(std::uint64_t tmp2, Left(sibling));
      HV_RETURN_IF_ERROR(SetRight(parent, tmp2));
      HV_RETURN_IF_ERROR(SetLeft(sibling, parent));
      HV_RETURN_IF_ERROR(SetParentColor(tmp1, sibling, kBlack));
      if (tmp2 != 0) HV_RETURN_IF_ERROR(SetParent(tmp2, parent));
      return RotateSetParents(parent, sibling, kBlack);
    }
    // node is the right child: the mirror image.
    HV_ASSIGN_OR_RETURN(sibling, Left(parent));
    HV_ASSIGN_OR_RETURN(bool sib_red, IsRed(sibling));
    if (sib_red) {
      HV_ASSIGN_OR_RETURN(std::uint64_t tmp1, Right(sibling));
      HV_RETURN_IF_ERROR(SetLeft(parent, tmp1));
      HV_RETURN_IF_ERROR(SetRight(sibling, parent));
      if (tmp1 == 0) return FailedPrecondition("red-black tree violates its colour rules: corrupt tree");
      HV_RETURN_IF_ERROR(SetParentColor(tmp1, parent, kBlack));
      HV_RETURN_IF_ERROR(RotateSetParents(parent, sibling, kRed));
      sibling = tmp1;
    }
    if (sibling == 0) return FailedPrecondition("red-black tree violates its colour rules: corrupt tree");
    HV_ASSIGN_OR_RETURN(std::uint64_t tmp1, Left(sibling));
    HV_ASSIGN_OR_RETURN(bool tmp1_red, IsRed(tmp1));
    if (!tmp1_red) {
      HV_ASSIGN_OR_RETURN(std::uint64_t tmp2, Right(sibling));
      HV_ASSIGN_OR_RETURN(bool tmp2_red, IsRed(tmp2));
      if (!tmp2_red) {
        HV_RETURN_IF_ERROR(SetParentColor(sibling, parent, kRed));
        HV_ASSIGN_OR_RETURN(bool parent_red, IsRed(parent));
        if (parent_red) {
          HV_ASSIGN_OR_RETURN(std::uint64_t pc, Pc(parent));
          return SetPc(parent, pc | kBlack);
        }
        node = parent;
        HV_ASSIGN_OR_RETURN(parent, Parent(node));
        if (parent != 0) continue;
        return Status::Ok();
      }
      HV_ASSIGN_OR_RETURN(tmp1, Left(tmp2));
      HV_RETURN_IF_ERROR(SetRight(sibling, tmp1));
      HV_RETURN_IF_ERROR(SetLeft(tmp2, sibling));
      HV_RETURN_IF_ERROR(SetLeft(parent, tmp2));
      if (tmp1 != 0) HV_RETURN_IF_ERROR(SetParentColor(tmp1, sibling, kBlack));
      tmp1 = sibling;
      sibling = tmp2;
    }
    HV_ASSIGN_OR_RETURN(std::uint64_t tmp2, Right(sibling));
    HV_RETURN_IF_ERROR(SetLeft(parent, tmp2));
    HV_RETURN_IF_ERROR(SetRight(sibling, parent));
    HV_RETURN_IF_ERROR(SetParentColor(tmp1, sibling, kBlack));
    if (tmp2 != 0) HV_RETURN_IF_ERROR(SetParent(tmp2, parent));
    return RotateSetParents(parent, sibling, kBlack);
  }
}

Result<std::vector<std::uint64_t>> RbTreeWriter::InOrder() {
  std::vector<std::uint64_t> out;
  std::vector<std::uint64_t> stack;
  HV_ASSIGN_OR_RETURN(std::uint64_t cur, mem_.Read64(root_));
  constexpr std::size_t kMaxNodes = 1u << 16;  // far more modules than a kernel can load
  while (cur != 0 || !stack.empty()) {
    while (cur != 0) {
      if (stack.size() >= kMaxDepth) return TooDeep();
      stack.push_back(cur);
      HV_ASSIGN_OR_RETURN(cur, Left(cur));
    }
    cur = stack.back();
    stack.pop_back();
    out.push_back(cur);
    if (out.size() > kMaxNodes) return FailedPrecondition("red-black tree has more than 65536 nodes: corrupt or cyclic");
    HV_ASSIGN_OR_RETURN(cur, Right(cur));
  }
  return out;
}

}  // namespace hv::patcher
