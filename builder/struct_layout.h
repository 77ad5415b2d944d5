// Struct layouts of two builds of one source file, from their DWARF as pahole prints it: a fix
// that changes the layout of a struct existing code already uses (a member added, moved or
// resized) cannot be live patched, since objects of the old layout stay in memory. Pure: pahole's
// text in, the changed structs out (kernel_tree's StructLayouts runs pahole).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::builder {

// pahole's output split into its top-level `struct NAME {...};` / `union NAME {...};` blocks, by
// "struct NAME".
std::map<std::string, std::string> ParseStructLayouts(std::string_view pahole_text);

// Refuses (kFailedPrecondition, naming the first changed struct and its sizes) when a struct or
// union present in both builds has another layout: "struct layout changes: 'struct pipe_buf'
// (size 16 -> 24 bytes)". Structs only in one build are new or unused, and fine.
Status CheckStructLayouts(std::string_view before, std::string_view after);

}  // namespace hv::builder
