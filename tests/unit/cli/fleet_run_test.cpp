// A fleet run's result for one domain, from its child's exit code and JSON (the children are
// `hvpatch --json apply DOMAIN PATCH.ko`).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli/fleet_run.h"

namespace hv::cli {
namespace {

TEST(FleetRunTest, ClassifiesEachChild) {
  FleetOutcome ok = ClassifyFleetChild("a", 0, R"({"name":"fix","pause_us":812,"tries":1,"confirmed":true})" "\n");
  EXPECT_EQ(ok.result, "ok");
  EXPECT_EQ(ok.pause_us, 812u);
  EXPECT_EQ(ok.tries, 1);
  EXPECT_TRUE(ok.confirmed);

  FleetOutcome busy = ClassifyFleetChild(
      "b", 3, R"({"error":{"code":"busy","message":"code busy after 2 tries: pid 97 (sleep) in do_nanosleep"},"exit_code":3})");
  EXPECT_EQ(busy.result, "busy");
  EXPECT_EQ(busy.detail, "code busy after 2 tries: pid 97 (sleep) in do_nanosleep");

  FleetOutcome skipped = ClassifyFleetChild(
      "c", 1,
      R"({"error":{"code":"failed_precondition","message":"patch 'f.ko' was built for kernel 'A', the guest runs 'B'"}})");
  EXPECT_EQ(skipped.result, "skipped");

  FleetOutcome failed = ClassifyFleetChild("d", 1, R"({"error":{"code":"unavailable","message":"no domain 'd'"}})");
  EXPECT_EQ(failed.result, "failed");
  EXPECT_EQ(failed.detail, "no domain 'd'");

  FleetOutcome crashed = ClassifyFleetChild("e", 1, "");
  EXPECT_EQ(crashed.result, "failed");
  EXPECT_EQ(crashed.detail, "hvpatch exited 1 with no result");
}

TEST(FleetRunTest, FleetFormsAreRecognised) {
  EXPECT_TRUE(IsFleetForm({"--all", "fix.ko"}));
  EXPECT_TRUE(IsFleetForm({"--domains", "a,b", "fix.ko"}));
  EXPECT_FALSE(IsFleetForm({"web1", "fix.ko"}));
  EXPECT_FALSE(IsFleetForm({}));
}

}  // namespace
}  // namespace hv::cli
