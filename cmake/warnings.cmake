# The warning set (STYLE §24), each flag probed so older compilers still build.
include(CheckCCompilerFlag)
set(TG_WARNINGS)
foreach(flag -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla
             -Wformat=2 -Wswitch-enum -Wno-format-nonliteral -Wno-unused-parameter)
  string(MAKE_C_IDENTIFIER "HAS${flag}" var)
  check_c_compiler_flag(${flag} ${var})
  if(${var})
    list(APPEND TG_WARNINGS ${flag})
  endif()
endforeach()
if(TG_WERROR)
  list(APPEND TG_WARNINGS -Werror)
endif()
