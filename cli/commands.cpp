#include "cli/command.h"

namespace hv::cli {

extern const Command kApplyCommand;
extern const Command kRevertCommand;
extern const Command kListCommand;
extern const Command kInfoCommand;
extern const Command kCheckCommand;
extern const Command kBuildCommand;

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {kApplyCommand, kRevertCommand, kListCommand,
                                                kInfoCommand, kCheckCommand, kBuildCommand};
  return commands;
}

}  // namespace hv::cli
