// The libvirt backend's pure parts: the agent channel from a domain's live XML (as libvirt 9.0
// writes it) and the domain directory from QEMU's command line.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"
#include "vmm/libvirt_vm.h"

namespace hv::vmm {
namespace {

using ::testing::HasSubstr;

std::string Value(const Result<std::string>& r) { return r.ok() ? *r : "<error: " + r.status().message() + ">"; }

// Trimmed from `virsh dumpxml` of a running test domain (libvirt 9.0).
constexpr char kLiveXml[] = R"(<domain type='qemu' id='3'>
  <name>hvpatch-test-a</name>
  <devices>
    <channel type='unix'>
      <source mode='bind' path='/tmp/hvpatch-lv-x/cmd.sock'/>
      <target type='virtio' name='org.hvpatch.test.0' state='connected'/>
      <alias name='channel1'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/tmp/a&apos;b/agent.sock'/>
      <target type='virtio' name='org.hvpatch.agent.0' state='disconnected'/>
      <alias name='channel0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <channel type='pty'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>
)";

TEST(LibvirtXmlTest, FindsTheAgentChannelByTargetName) {
  EXPECT_EQ(Value(ChannelSocketFromXml(kLiveXml, "org.hvpatch.agent.0")), "/tmp/a'b/agent.sock");
  EXPECT_EQ(Value(ChannelSocketFromXml(kLiveXml, "org.hvpatch.test.0")), "/tmp/hvpatch-lv-x/cmd.sock");
}

TEST(LibvirtXmlTest, NoChannelIsNotFound) {
  EXPECT_THAT(ChannelSocketFromXml("<domain><devices/></domain>", "org.hvpatch.agent.0"),
              StatusIs(Code::kNotFound, HasSubstr("no channel 'org.hvpatch.agent.0'")));
  EXPECT_THAT(ChannelSocketFromXml(kLiveXml, "org.qemu.guest_agent.0"),
              StatusIs(Code::kNotFound, HasSubstr("is not a unix socket")));
}

TEST(LibvirtXmlTest, DomainDirFromTheMasterKeyArgument) {
  using namespace std::string_literals;
  const std::string json_form =
      "/usr/bin/qemu-system-x86_64\0-name\0guest=a\0-object\0{\"qom-type\":\"secret\",\"id\":\"masterKey0\","
      "\"format\":\"raw\",\"file\":\"/var/lib/libvirt/qemu/domain-3-hvpatch-test-a/master-key.aes\"}\0"s;
  EXPECT_EQ(Value(DomainDirFromCmdline(json_form)), "/var/lib/libvirt/qemu/domain-3-hvpatch-test-a");
  const std::string old_form = "qemu\0-object\0secret,id=masterKey0,format=raw,file=/var/lib/libvirt/qemu/"
                               "domain-1-x/master-key.aes\0"s;
  EXPECT_EQ(Value(DomainDirFromCmdline(old_form)), "/var/lib/libvirt/qemu/domain-1-x");
  EXPECT_THAT(DomainDirFromCmdline("qemu\0-m\0512\0"s), StatusIs(Code::kNotFound, HasSubstr("names no libvirt master-key.aes")));
}

TEST(LibvirtXmlTest, ArenaXmlIsAMasterIvshmemOf2MiB) {
  const std::string xml = ArenaShmemXml("0b3c");
  EXPECT_THAT(xml, HasSubstr("<shmem name='hvpatch-arena-0b3c' role='master'>"));
  EXPECT_THAT(xml, HasSubstr("<model type='ivshmem-plain'/>"));
  EXPECT_THAT(xml, HasSubstr("<size unit='M'>2</size>"));
}

// The hook unlinks this path as root, from a UUID in XML it is handed: only a UUID may name it.
TEST(LibvirtXmlTest, ArenaFileIsNamedOnlyForAUuid) {
  EXPECT_EQ(ArenaShmemPath("8f2d6c1e-0b3c-4a7e-9d51-2c4b6a8e0f13"),
            "/dev/shm/hvpatch-arena-8f2d6c1e-0b3c-4a7e-9d51-2c4b6a8e0f13");
  EXPECT_EQ(ArenaShmemPath(""), "");
  EXPECT_EQ(ArenaShmemPath("0b3c"), "");
  EXPECT_EQ(ArenaShmemPath("../../../etc/passwd-0000-0000-000000"), "");
  EXPECT_EQ(ArenaShmemPath("8f2d6c1e-0b3c-4a7e-9d51-2c4b6a8e0f1/"), "");
}

}  // namespace
}  // namespace hv::vmm
