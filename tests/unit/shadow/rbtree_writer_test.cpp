#include "patcher/rbtree_writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "fake_kernel_words.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::hv::testing::FakeKernelWords;
using ::hv::StatusIs;
using ::testing::HasSubstr;

constexpr std::uint64_t kBase = 0xffffffffc0000000ull;
constexpr std::uint64_t kRoot = kBase;           // struct rb_root
constexpr std::uint64_t kNodes = kBase + 0x100;  // node i at kNodes + 32 * i, its key right after
constexpr std::uint64_t kStride = 32;

std::uint64_t NodeVa(int i) { return kNodes + kStride * static_cast<std::uint64_t>(i); }

class RbTreeTest : public ::testing::Test {
 protected:
  RbTreeTest() : mem_(kBase, 0x100 + kStride * 4096), tree_(mem_, kRoot) {}

  std::uint64_t Key(std::uint64_t node) { return mem_.Get64(node + 24); }

  void Insert(int i, std::uint64_t key) {
    mem_.Set64(NodeVa(i) + 24, key);
    auto less = [&](std::uint64_t a, std::uint64_t b) -> Result<bool> { return Key(a) < Key(b); };
    ASSERT_TRUE(tree_.Insert(NodeVa(i), less).ok());
  }

  // Checks every red-black rule and the parent links; returns the in-order keys.
  std::vector<std::uint64_t> Check() {
    std::vector<std::uint64_t> keys;
    const std::uint64_t root = mem_.Get64(kRoot);
    if (root != 0) {
      EXPECT_EQ(mem_.Get64(root) & ~3ull, 0u) << "root has a parent";
      EXPECT_EQ(mem_.Get64(root) & 1, 1u) << "root is red";
    }
    int black_height = -1;
    Walk(root, 0, 0, &black_height, &keys);
    return keys;
  }
  void Walk(std::uint64_t n, std::uint64_t parent, int blacks, int* height, std::vector<std::uint64_t>* keys) {
    if (n == 0) {
      if (*height < 0) *height = blacks;
      EXPECT_EQ(blacks, *height) << "unequal black heights";
      return;
    }
    const std::uint64_t pc = mem_.Get64(n);
    EXPECT_EQ(pc & ~3ull, parent) << "bad parent link at " << Hex(n);
    const bool red = (pc & 1) == 0;
    const std::uint64_t left = mem_.Get64(n + 16), right = mem_.Get64(n + 8);
    if (red) {
      EXPECT_TRUE(left == 0 || (mem_.Get64(left) & 1) == 1) << "red node with a red child";
      EXPECT_TRUE(right == 0 || (mem_.Get64(right) & 1) == 1) << "red node with a red child";
    }
    Walk(left, n, blacks + (red ? 0 : 1), height, keys);
    keys->push_back(Key(n));
    Walk(right, n, blacks + (red ? 0 : 1), height, keys);
  }

  FakeKernelWords mem_;
  RbTreeWriter tree_;
};

TEST_F(RbTreeTest, AscendingInsertsStayBalanced) {
  for (int i = 0; i < 100; ++i) Insert(i, 1000 + i);
  auto keys = Check();
  ASSERT_EQ(keys.size(), 100u);
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  auto order = tree_.InOrder();
  ASSERT_TRUE(order.ok());
  EXPECT_EQ(order->size(), 100u);
  EXPECT_EQ(order->front(), NodeVa(0));
}

TEST_F(RbTreeTest, RandomInsertsAndErasesMatchASortedSet) {
  std::mt19937_64 rng(11);
  std::multiset<std::uint64_t> model;
  std::map<int, std::uint64_t> live;  // node index -> key
  int next = 0;
  for (int round = 0; round < 3000; ++round) {
    const bool insert = live.empty() || (rng() % 3 != 0 && next < 4000);
    if (insert) {
      const std::uint64_t key = rng() % 500;  // duplicates go right, as latch_tree_insert's do
      Insert(next, key);
      live[next++] = key;
      model.insert(key);
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      ASSERT_TRUE(tree_.Erase(NodeVa(it->first)).ok()) << "erase node " << it->first;
      model.erase(model.find(it->second));
      live.erase(it);
    }
    if (round % 50 == 0 || round > 2900) {
      auto keys = Check();
      ASSERT_EQ(keys, std::vector<std::uint64_t>(model.begin(), model.end())) << "round " << round;
    }
  }
  while (!live.empty()) {
    ASSERT_TRUE(tree_.Erase(NodeVa(live.begin()->first)).ok());
    live.erase(live.begin());
    Check();
  }
  EXPECT_EQ(mem_.Get64(kRoot), 0u);
}

TEST_F(RbTreeTest, EraseOfANodeNotInTheTreeIsRefusedWithoutWrites) {
  Insert(0, 5);
  Insert(1, 7);
  const std::size_t writes = mem_.writes();
  EXPECT_THAT(tree_.Erase(NodeVa(9)), StatusIs(Code::kFailedPrecondition, HasSubstr("is not in the red-black tree")));
  EXPECT_EQ(mem_.writes(), writes);
}

TEST_F(RbTreeTest, InsertTwiceIsRefused) {
  Insert(0, 5);
  auto less = [&](std::uint64_t a, std::uint64_t b) -> Result<bool> { return Key(a) < Key(b); };
  EXPECT_THAT(tree_.Insert(NodeVa(0), less), StatusIs(Code::kFailedPrecondition, HasSubstr("already in")));
}

TEST_F(RbTreeTest, CyclicTreeIsRefused) {
  Insert(0, 5);
  Insert(1, 7);  // right child of node 0
  mem_.Set64(NodeVa(1) + 8, NodeVa(0));  // node 1's right points back up: a cycle
  auto less = [&](std::uint64_t, std::uint64_t) -> Result<bool> { return false; };  // always right
  EXPECT_THAT(tree_.Insert(NodeVa(2), less), StatusIs(Code::kFailedPrecondition, HasSubstr("deeper than 128")));
  EXPECT_THAT(tree_.InOrder(), StatusIs(Code::kFailedPrecondition, ::testing::_));
}

TEST_F(RbTreeTest, UnmappedNodeIsAnError) {
  mem_.Set64(kRoot, 0xffff888000000000ull);
  auto less = [&](std::uint64_t, std::uint64_t) -> Result<bool> { return true; };
  EXPECT_THAT(tree_.Insert(NodeVa(0), less), StatusIs(Code::kNotFound, HasSubstr("not mapped")));
}

TEST_F(RbTreeTest, StagedEditsReachMemoryOnlyOnFlush) {
  Insert(0, 5);
  Insert(1, 3);
  const auto before = mem_.bytes();
  StagedKernelWords staged(mem_);
  RbTreeWriter t(staged, kRoot);
  mem_.Set64(NodeVa(2) + 24, 4);
  auto less = [&](std::uint64_t a, std::uint64_t b) -> Result<bool> { return Key(a) < Key(b); };
  ASSERT_TRUE(t.Insert(NodeVa(2), less).ok());
  ASSERT_TRUE(t.Erase(NodeVa(0)).ok());
  auto staged_order = t.InOrder();
  ASSERT_TRUE(staged_order.ok());
  EXPECT_EQ(*staged_order, (std::vector<std::uint64_t>{NodeVa(1), NodeVa(2)}));
  mem_.Set64(NodeVa(2) + 24, 0);  // the key is not part of the tree's words: restore the bytes
  EXPECT_EQ(mem_.bytes(), before);
  mem_.Set64(NodeVa(2) + 24, 4);
  ASSERT_TRUE(staged.Flush(mem_).ok());
  EXPECT_EQ(Check(), (std::vector<std::uint64_t>{3, 4}));
}

}  // namespace
}  // namespace hv::patcher
