-- medlua.path: file and folder names, shared by the library and the recipes.
--   local path = require "medlua.path"
--   path.dirname("a/b/c.nii.gz")      --> "a/b"      ("." for a bare name, "/" at the root)
--   path.basename("a/b/")             --> "b"
--   path.join("out", "x.png")         --> "out/x.png" (an absolute second part wins; "." is dropped)
--   path.resolve("a/b", "../c")       --> "a/c"      (join, then "." and ".." folded)
--   path.case_name("ct/s01.nii.gz")   --> "s01"      (the name without .nii.gz / .nii / .gz)
--   path.exists(p), path.is_dir(p), path.mkdir(p) (mkdir -p; raises naming the folder)
--   path.root()                        the folder that holds lua/medlua (the repository or install root)
local M = {}

function M.dirname(p)
  local d = p:gsub("/+$", ""):match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

function M.basename(p)
  local b = p:gsub("/+$", ""):match("([^/]*)$")
  return b
end

function M.join(a, b)
  if b:sub(1, 1) == "/" or a == "" or a == "." then return b end
  return a:sub(-1) == "/" and (a .. b) or (a .. "/" .. b)
end

function M.normpath(p)
  local abs = p:sub(1, 1) == "/"
  local parts = {}
  for seg in p:gmatch("[^/]+") do
    if seg == ".." then
      if #parts > 0 and parts[#parts] ~= ".." then parts[#parts] = nil
      elseif not abs then parts[#parts + 1] = ".." end
    elseif seg ~= "." then
      parts[#parts + 1] = seg
    end
  end
  local s = table.concat(parts, "/")
  if abs then return "/" .. s end
  return s == "" and "." or s
end

function M.resolve(base, p)
  if p:sub(1, 1) == "/" then return M.normpath(p) end
  return M.normpath(base .. "/" .. p)
end

function M.case_name(p)
  return (M.basename(p):gsub("%.nii%.gz$", ""):gsub("%.nii$", ""):gsub("%.gz$", ""))
end

--- a file or a folder (also one we may not read)
function M.exists(p)
  local f = io.open(p, "rb")
  if f then f:close(); return true end
  return os.rename(p, p) ~= nil
end

function M.is_dir(p)
  local f = io.open(p, "rb")
  if not f then return false end
  local _, _, code = f:read(1)
  f:close()
  return code == 21 -- EISDIR
end

function M.mkdir(p)
  if M.is_dir(p) then return end
  local ok = os.execute("mkdir -p -- '" .. p:gsub("'", "'\\''") .. "' 2>/dev/null")
  if not ok or not M.is_dir(p) then error(p .. ": cannot create the folder", 2) end
end

function M.root()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  return src:match("^(.*)/lua/medlua/path%.lua$") or "."
end

return M
