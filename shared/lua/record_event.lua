-- Library: record_event(flat), the record event (the public record as JSON) of a record's flat
-- HGETALL-style field list. The hash leaves out ``url`` and empty extra fields (shared/record.py);
-- the event has them all, as ``GET /container/<hostname>`` shows them.
-- uses: record_defaults
local function record_event(flat)
  local rec = {}
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 1) ~= '_' then rec[flat[i]] = flat[i + 1] end
  end
  for k, v in pairs(PUBLIC_DEFAULTS) do
    if rec[k] == nil then rec[k] = v end
  end
  if not rec['url'] or rec['url'] == '' then
    rec['url'] = (rec['hostname'] or '') .. '.' .. (rec['domainname'] or '')
  end
  return cjson.encode(rec)
end
