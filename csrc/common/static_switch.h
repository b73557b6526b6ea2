// Turns run-time flags into compile-time template arguments.
#pragma once

#define FA_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                 \
    if (COND) {                         \
      constexpr static bool NAME = true; \
      return __VA_ARGS__();             \
    } else {                            \
      constexpr static bool NAME = false; \
      return __VA_ARGS__();             \
    }                                   \
  }()
