using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace NativeLora.Text;

/// <summary>
/// Attribute and item access, filters, tests, the methods of str and dict, the global functions and
/// tojson. Each follows Python Jinja as configured by transformers (its own tojson included).
/// Filters and tests that Jinja has but chat templates do not use fail when reached, naming themselves.
/// </summary>
internal static class JinjaBuiltins
{
    // ---------------------------------------------------------------- names

    private static readonly HashSet<string> SupportedFilters =
    [
        "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
        "forceescape", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
        "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string",
        "sum", "title", "tojson", "trim", "unique", "upper", "wordcount",
    ];

    /// <summary>Jinja's filters that are not implemented: valid templates, so they fail only when used.</summary>
    private static readonly HashSet<string> UnsupportedFilters =
    [
        "batch", "center", "filesizeformat", "format", "groupby", "pprint", "random", "slice", "striptags",
        "truncate", "urlencode", "urlize", "wordwrap", "xmlattr",
    ];

    private static readonly HashSet<string> SupportedTests =
    [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter",
        "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping",
        "ne", "none", "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper",
        "==", "!=", "<", "<=", ">", ">=",
    ];

    public static bool IsJinjaFilter(string name) => SupportedFilters.Contains(name) || UnsupportedFilters.Contains(name);

    public static bool IsJinjaTest(string name) => SupportedTests.Contains(name);

    // ---------------------------------------------------------------- globals

    /// <summary>namespace(...) and dict(...) both take dicts and keyword arguments, later keys winning, as Python's dict() does.</summary>
    static void Merge(CallArgs args, OrderedDictionary<string, JinjaValue> into, string what)
    {
        foreach (var value in args.Positional)
        {
            if (value is not DictValue d) throw new JinjaError($"{what} takes a dict or keyword arguments");
            foreach (var (k, v) in d.Items) into[k] = v;
        }
        foreach (var (k, v) in args.Keywords) into[k] = v;
    }

    /// <summary>The functions every template sees (transformers adds raise_exception and strftime_now).</summary>
    public static void AddGlobals(Scope scope, JinjaInterpreter interpreter)
    {
        scope.Set("range", new CallableValue("range", Range));
        scope.Set("namespace", new CallableValue("namespace", args =>
        {
            var ns = new ObjectValue("Namespace", assignable: true);
            Merge(args, ns.Attributes, "namespace()");
            return ns;
        }));
        scope.Set("dict", new CallableValue("dict", args =>
        {
            var d = new DictValue();
            Merge(args, d.Items, "dict()");
            return d;
        }));
        scope.Set("raise_exception", new CallableValue("raise_exception", args =>
        {
            var message = args.Bind("raise_exception()", "message")[0];
            throw new JinjaError(message == null ? "" : Py.ToStr(message), raisedByTemplate: true);
        }));
        scope.Set("strftime_now", new CallableValue("strftime_now", args =>
        {
            var format = args.Bind("strftime_now()", "format")[0] as StringValue
                         ?? throw new JinjaError("strftime_now() needs a format string");
            return Py.Str(Strftime(interpreter.Clock.GetLocalNow().DateTime, format.Value));
        }));
    }

    private static JinjaValue Range(CallArgs args)
    {
        if (args.Keywords.Count > 0 || args.Positional.Count is 0 or > 3) throw new JinjaError("range() takes 1 to 3 integer arguments");
        var n = args.Positional.Select(v => v is IntValue or BoolValue ? Py.ToLong(v) : throw new JinjaError($"range() arguments must be integers, not '{v.TypeName}'")).ToArray();
        long start = n.Length == 1 ? 0 : n[0], stop = n.Length == 1 ? n[0] : n[1], step = n.Length == 3 ? n[2] : 1;
        if (step == 0) throw new JinjaError("range() arg 3 must not be zero");
        var items = new List<JinjaValue>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            if (items.Count >= 100_000) throw new JinjaError("range too big, the sandbox allows at most 100000 items");
            items.Add(new IntValue(i));
        }
        return new ListValue(items);
    }

    /// <summary>The strftime codes that chat templates use (Llama 3.x prints "%d %b %Y").</summary>
    public static string Strftime(DateTime t, string format)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 == format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            char c = format[++i];
            bool noPad = c == '-' && i + 1 < format.Length; // glibc's "%-d": no zero padding
            if (noPad) c = format[++i];
            string Num(int value, int width) => noPad ? value.ToString(inv) : value.ToString(new string('0', width), inv);
            sb.Append(c switch
            {
                'Y' => t.Year.ToString(inv),
                'y' => Num(t.Year % 100, 2),
                'm' => Num(t.Month, 2),
                'd' => Num(t.Day, 2),
                'e' => t.Day.ToString(inv).PadLeft(2),
                'H' => Num(t.Hour, 2),
                'I' => Num(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2),
                'M' => Num(t.Minute, 2),
                'S' => Num(t.Second, 2),
                'j' => Num(t.DayOfYear, 3),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'b' or 'h' => inv.DateTimeFormat.GetAbbreviatedMonthName(t.Month),
                'B' => inv.DateTimeFormat.GetMonthName(t.Month),
                'a' => inv.DateTimeFormat.GetAbbreviatedDayName(t.DayOfWeek),
                'A' => inv.DateTimeFormat.GetDayName(t.DayOfWeek),
                'F' => t.ToString("yyyy-MM-dd", inv),
                'T' => t.ToString("HH:mm:ss", inv),
                '%' => "%",
                _ => throw new JinjaError($"strftime code '%{c}' is not supported"),
            });
        }
        return sb.ToString();
    }

    // ---------------------------------------------------------------- attribute and item access

    /// <summary><c>obj.name</c>: Python attribute first (so <c>d.items</c> is the method), then the item.</summary>
    public static JinjaValue GetAttr(JinjaValue obj, string name)
    {
        switch (obj)
        {
            case UndefinedValue u:
                throw u.Fail();
            case StringValue s when StringMethod(s.Value, name) is { } method:
                return method;
            case DictValue d:
                if (DictMethod(d, name) is { } dictMethod) return dictMethod;
                if (d.Items.TryGetValue(name, out var value)) return value;
                break;
            case ObjectValue o:
                if (o.Attributes.TryGetValue(name, out var attribute)) return attribute;
                return new UndefinedValue($"'{o.TypeName}' object has no attribute '{name}'");
            case ListValue when name is "append" or "extend" or "insert" or "pop" or "remove" or "clear" or "sort" or "reverse":
                return new UndefinedValue($"list.{name}() is not allowed: templates cannot modify lists (Jinja's immutable sandbox)");
        }
        return new UndefinedValue($"{Describe(obj)} has no attribute '{name}'");
    }

    /// <summary>How Jinja names an object in "has no attribute" messages: 'dict object', 'None'.</summary>
    private static string Describe(JinjaValue obj) => obj is NoneValue ? "'None'" : $"'{obj.TypeName} object'";

    /// <summary><c>obj[key]</c>: the item first, then (for a string key) the attribute, as Jinja does.</summary>
    public static JinjaValue GetItem(JinjaValue obj, JinjaValue key)
    {
        switch (obj, key)
        {
            case (UndefinedValue u, _):
                throw u.Fail();
            case (ListValue or StringValue, IntValue or BoolValue):
            {
                var items = Py.Iterate(obj); // a string's items are its characters (code points)
                long i = Py.ToLong(key);
                if (i < 0) i += items.Count;
                return i >= 0 && i < items.Count ? items[(int)i] : new UndefinedValue($"{Describe(obj)} has no element {Py.ToLong(key)}");
            }
            case (DictValue d, StringValue k) when d.Items.TryGetValue(k.Value, out var value):
                return value;
            case (_, StringValue name):
                return GetAttr(obj, name.Value);
        }
        return new UndefinedValue($"{Describe(obj)} has no element {Py.Repr(key)}");
    }

    /// <summary>Python slicing of lists, tuples and strings (by code point).</summary>
    public static JinjaValue Slice(JinjaValue obj, JinjaValue? start, JinjaValue? stop, JinjaValue? step)
    {
        static long? Index(JinjaValue? v, string what) => v switch
        {
            null or NoneValue => null,
            IntValue or BoolValue => Py.ToLong(v),
            _ => throw new JinjaError($"slice {what} must be an integer or None, not '{v.TypeName}'"),
        };
        long stepValue = Index(step, "step") ?? 1;
        if (stepValue == 0) throw new JinjaError("slice step cannot be zero");
        List<string>? chars = null;
        int length = obj switch
        {
            ListValue l => l.Items.Count,
            StringValue s => (chars = Py.Chars(s.Value)).Count,
            UndefinedValue u => throw u.Fail(),
            _ => throw new JinjaError($"'{obj.TypeName}' object is not subscriptable"),
        };
        long lower = stepValue > 0 ? 0 : -1, upper = stepValue > 0 ? length : length - 1;
        long Clamp(long? v, long fallback)
        {
            if (v == null) return fallback;
            long x = v.Value < 0 ? v.Value + length : v.Value;
            return Math.Clamp(x, lower, upper);
        }
        long from = Clamp(Index(start, "start"), stepValue > 0 ? lower : upper);
        long to = Clamp(Index(stop, "stop"), stepValue > 0 ? upper : lower);
        var picked = new List<int>();
        for (long i = from; stepValue > 0 ? i < to : i > to; i += stepValue) picked.Add((int)i);
        if (obj is ListValue list) return new ListValue(picked.Select(i => list.Items[i]).ToList(), list.IsTuple);
        var sb = new StringBuilder();
        foreach (int i in picked) sb.Append(chars![i]);
        return Py.Str(sb.ToString());
    }

    // ---------------------------------------------------------------- methods

    private static CallableValue Method(string name, Func<CallArgs, JinjaValue> body) => new(name, body);

    private static string? OptionalString(JinjaValue? v, string what) => v switch
    {
        null or NoneValue => null,
        StringValue s => s.Value,
        _ => throw new JinjaError($"{what} must be a string or None, not '{v.TypeName}'"),
    };

    private static string RequireString(JinjaValue? v, string what) =>
        v is StringValue s ? s.Value : throw new JinjaError($"{what} must be a string, not '{v?.TypeName ?? "nothing"}'");

    private static long OptionalLong(JinjaValue? v, long fallback) => v is null or NoneValue ? fallback : Py.ToLong(v);

    /// <summary>A boolean argument left out is false.</summary>
    private static bool OptionalBool(JinjaValue? v) => v != null && Py.IsTrue(v);

    /// <summary>The indent of the indent filter and tojson: a string as it is, a number as that many spaces.</summary>
    private static string IndentText(JinjaValue width) =>
        width is StringValue s ? s.Value : new string(' ', (int)Math.Max(0, Py.ToLong(width)));

    /// <summary>The str methods templates call, with Python's semantics (strip(chars), split(sep, maxsplit)…).</summary>
    private static CallableValue? StringMethod(string s, string name)
    {
        switch (name)
        {
            case "strip":
            case "lstrip":
            case "rstrip":
                return Method(name, a =>
                {
                    var chars = OptionalString(a.Bind($"str.{name}()", "chars")[0], "chars");
                    return Py.Str(PyText.Strip(s, chars, left: name != "rstrip", right: name != "lstrip"));
                });
            case "startswith":
            case "endswith":
                return Method(name, a =>
                {
                    var p = a.Bind($"str.{name}()", "prefix", "start", "end");
                    var chars = Py.Chars(s);
                    int start = (int)Math.Clamp(OptionalLong(p[1], 0) is var st && st < 0 ? st + chars.Count : st, 0, chars.Count);
                    int end = (int)Math.Clamp(OptionalLong(p[2], chars.Count) is var en && en < 0 ? en + chars.Count : en, 0, chars.Count);
                    string part = start >= end ? "" : string.Concat(chars.GetRange(start, end - start));
                    var options = p[0] switch
                    {
                        StringValue one => [one.Value],
                        ListValue { IsTuple: true } tuple => tuple.Items.Select(x => RequireString(x, $"{name}() tuple items")).ToList(),
                        _ => throw new JinjaError($"{name}() first arg must be str or a tuple of str"),
                    };
                    return BoolValue.Of(options.Exists(o => name == "startswith"
                        ? part.StartsWith(o, StringComparison.Ordinal)
                        : part.EndsWith(o, StringComparison.Ordinal)));
                });
            case "split":
            case "rsplit":
                return Method(name, a =>
                {
                    var p = a.Bind($"str.{name}()", "sep", "maxsplit");
                    var sep = OptionalString(p[0], "sep");
                    if (sep == "") throw new JinjaError("empty separator");
                    var parts = PyText.Split(s, sep, OptionalLong(p[1], -1), fromRight: name == "rsplit");
                    return new ListValue(parts.Select(x => (JinjaValue)Py.Str(x)).ToList());
                });
            case "splitlines":
                return Method(name, a =>
                {
                    bool keep = Py.IsTrue(a.Bind("str.splitlines()", "keepends")[0] ?? BoolValue.False);
                    return new ListValue(SplitLines(s, keep).Select(x => (JinjaValue)Py.Str(x)).ToList());
                });
            case "upper": return Method(name, a => { a.Bind("str.upper()"); return Py.Str(s.ToUpperInvariant()); });
            case "lower": return Method(name, a => { a.Bind("str.lower()"); return Py.Str(PyText.Lower(s)); });
            case "title": return Method(name, a => { a.Bind("str.title()"); return Py.Str(PyTitle(s)); });
            case "capitalize": return Method(name, a => { a.Bind("str.capitalize()"); return Py.Str(PyText.Capitalize(s)); });
            case "replace": return Method(name, a => Replace(s, a.Bind("str.replace()", "old", "new", "count")));
            case "join":
                return Method(name, a =>
                {
                    var items = Py.Iterate(a.Bind("str.join()", "iterable")[0] ?? throw new JinjaError("join() takes one argument"));
                    return Py.Str(string.Join(s, items.Select(x => RequireString(x, "str.join() items"))));
                });
            case "find":
            case "count":
                return Method(name, a =>
                {
                    string sub = RequireString(a.Bind($"str.{name}()", "sub")[0], $"{name}() argument");
                    if (name == "find")
                    {
                        int at = s.IndexOf(sub, StringComparison.Ordinal);
                        return new IntValue(at < 0 ? -1 : PyText.Length(s[..at]));
                    }
                    if (sub.Length == 0) return new IntValue(PyText.Length(s) + 1);
                    int n = 0;
                    for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal)) n++;
                    return new IntValue(n);
                });
            case "isdigit": return Method(name, a => BoolValue.Of(s.Length > 0 && s.All(char.IsDigit)));
            case "isalpha": return Method(name, a => BoolValue.Of(s.Length > 0 && s.All(char.IsLetter)));
            case "isalnum": return Method(name, a => BoolValue.Of(s.Length > 0 && s.All(char.IsLetterOrDigit)));
            case "isspace": return Method(name, a => BoolValue.Of(s.Length > 0 && s.All(PyText.IsSpace)));
            case "islower": return Method(name, a => BoolValue.Of(IsLower(s)));
            case "isupper": return Method(name, a => BoolValue.Of(IsUpper(s)));
            default: return null;
        }
    }

    private static CallableValue? DictMethod(DictValue d, string name) => name switch
    {
        "items" => Method(name, a => { a.Bind("dict.items()"); return Items(d); }),
        "keys" => Method(name, a => { a.Bind("dict.keys()"); return new ListValue(Py.Iterate(d)); }), // iterating a dict yields its keys
        "values" => Method(name, a => { a.Bind("dict.values()"); return new ListValue(d.Items.Values.ToList()); }),
        "get" => Method(name, a =>
        {
            var p = a.Bind("dict.get()", "key", "default");
            return p[0] is StringValue k && d.Items.TryGetValue(k.Value, out var v) ? v : p[1] ?? NoneValue.Instance;
        }),
        _ => null,
    };

    private static ListValue Items(DictValue d) =>
        new(d.Items.Select(kv => (JinjaValue)ListValue.Tuple(Py.Str(kv.Key), kv.Value)).ToList());

    private static List<string> SplitLines(string s, bool keepEnds)
    {
        var lines = new List<string>();
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c is not ('\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029')) continue;
            int end = i;
            if (c == '\r' && i + 1 < s.Length && s[i + 1] == '\n') i++;
            lines.Add(keepEnds ? s[start..(i + 1)] : s[start..end]);
            start = i + 1;
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    /// <summary>str.replace(old, new, count) and the replace filter, from their bound arguments.</summary>
    private static JinjaValue Replace(string s, JinjaValue?[] p) =>
        Py.Str(Replace(s, RequireString(p[0], "replace() old"), RequireString(p[1], "replace() new"), OptionalLong(p[2], -1)));

    /// <summary>Python's str.replace: count &lt; 0 means all; an empty old inserts between characters.</summary>
    private static string Replace(string s, string old, string replacement, long count)
    {
        if (count < 0) count = long.MaxValue;
        var sb = new StringBuilder();
        if (old.Length == 0)
        {
            // "abc".replace("", "-") is "-a-b-c-": the empty string matches between every character.
            var chars = Py.Chars(s);
            long inserted = 0;
            for (int i = 0; i <= chars.Count; i++)
            {
                if (inserted++ < count) sb.Append(replacement);
                if (i < chars.Count) sb.Append(chars[i]);
            }
            return sb.ToString();
        }
        int start = 0;
        long done = 0;
        for (int at = s.IndexOf(old, StringComparison.Ordinal); at >= 0 && done < count; at = s.IndexOf(old, start, StringComparison.Ordinal))
        {
            sb.Append(s, start, at - start).Append(replacement);
            start = at + old.Length;
            done++;
        }
        return sb.Append(s, start, s.Length - start).ToString();
    }

    /// <summary>Python's str.title(): a letter after a non-letter is upper-cased, every other letter lower-cased.</summary>
    private static string PyTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousCased = false;
        foreach (char c in s)
        {
            sb.Append(previousCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            previousCased = char.IsLetter(c);
        }
        return sb.ToString();
    }

    private static bool IsLower(string s) => s.Any(char.IsLower) && !s.Any(char.IsUpper);

    private static bool IsUpper(string s) => s.Any(char.IsUpper) && !s.Any(char.IsLower);

    // ---------------------------------------------------------------- filters

    public static JinjaValue Filter(string name, JinjaValue v, CallArgs args, JinjaInterpreter interpreter)
    {
        string what = $"filter '{name}'";
        switch (name)
        {
            case "abs":
                args.Bind(what);
                return v switch
                {
                    FloatValue f => new FloatValue(Math.Abs(f.Value)),
                    IntValue or BoolValue => new IntValue(checked(Math.Abs(Py.ToLong(v)))),
                    UndefinedValue u => throw u.Fail(),
                    _ => throw new JinjaError($"bad operand type for abs(): '{v.TypeName}'"),
                };
            case "attr":
                return GetAttr(v, RequireString(args.Bind(what, "name")[0], "attr() name"));
            case "capitalize":
                args.Bind(what);
                return Py.Str(PyText.Capitalize(Py.ToStr(v)));
            case "count":
            case "length":
                args.Bind(what);
                return new IntValue(Py.Length(v));
            case "d":
            case "default":
            {
                var p = args.Bind(what, "default_value", "boolean");
                bool boolean = OptionalBool(p[1]);
                return v is UndefinedValue || (boolean && !Py.IsTrue(v)) ? p[0] ?? StringValue.Empty : v;
            }
            case "dictsort":
            {
                var p = args.Bind(what, "case_sensitive", "by", "reverse");
                if (v is not DictValue d) throw new JinjaError($"dictsort expects a dict, got '{v.TypeName}'");
                bool caseSensitive = OptionalBool(p[0]);
                string by = OptionalString(p[1], "dictsort by") ?? "key";
                if (by is not ("key" or "value")) throw new JinjaError("dictsort: you can only sort by either 'key' or 'value'");
                int index = by == "key" ? 0 : 1;
                var items = Items(d).Items;
                return new ListValue(SortBy(items, x => SortKey(((ListValue)x).Items[index], caseSensitive), OptionalBool(p[2])));
            }
            case "e":
            case "escape":
            case "forceescape":
                args.Bind(what);
                return Py.Str(Py.ToStr(v).Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;"));
            case "first":
            {
                args.Bind(what);
                var items = Py.Iterate(v);
                return items.Count > 0 ? items[0] : new UndefinedValue("No first item, sequence was empty.");
            }
            case "last":
            {
                args.Bind(what);
                if (v is UndefinedValue u) throw u.Fail();
                var items = Py.Iterate(v);
                return items.Count > 0 ? items[^1] : new UndefinedValue("No last item, sequence was empty.");
            }
            case "float":
            {
                var fallback = args.Bind(what, "default")[0] ?? new FloatValue(0);
                return v switch
                {
                    FloatValue => v,
                    IntValue or BoolValue => new FloatValue(Py.ToDouble(v)),
                    StringValue s when double.TryParse(s.Value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double x) => new FloatValue(x),
                    _ => fallback,
                };
            }
            case "int":
            {
                var p = args.Bind(what, "default", "base");
                var fallback = p[0] ?? new IntValue(0);
                int radix = (int)OptionalLong(p[1], 10);
                switch (v)
                {
                    case IntValue: return v;
                    case BoolValue: return new IntValue(Py.ToLong(v));
                    case FloatValue f: return double.IsFinite(f.Value) ? new IntValue((long)Math.Truncate(f.Value)) : fallback;
                    case StringValue s:
                    {
                        string text = s.Value.Trim().Replace("_", "");
                        if (radix == 10 && long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long i)) return new IntValue(i);
                        if (radix != 10)
                        {
                            try { return new IntValue(Convert.ToInt64(StripRadixPrefix(text, radix), radix)); }
                            catch (Exception e) when (e is FormatException or ArgumentException or OverflowException) { return fallback; }
                        }
                        // Jinja falls back to int(float(value)): "3.7" gives 3.
                        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double x) && double.IsFinite(x)
                            ? new IntValue((long)Math.Truncate(x)) : fallback;
                    }
                    default: return fallback;
                }
            }
            case "items":
                args.Bind(what);
                return v switch
                {
                    DictValue d => Items(d),
                    UndefinedValue => new ListValue([]),
                    _ => throw new JinjaError("Can only get item pairs from a mapping."),
                };
            case "indent":
            {
                var p = args.Bind(what, "width", "first", "blank");
                string indent = p[0] == null ? "    " : IndentText(p[0]!);
                return Py.Str(Indent(Py.ToStr(v), indent, OptionalBool(p[1]), OptionalBool(p[2])));
            }
            case "join":
            {
                var p = args.Bind(what, "d", "attribute");
                var items = Py.Iterate(v);
                if (p[1] != null) items = items.Select(x => AttributePath(x, p[1]!)).ToList();
                return Py.Str(string.Join(OptionalString(p[0], "join separator") ?? "", items.Select(Py.ToStr)));
            }
            case "list":
                args.Bind(what);
                return new ListValue(new List<JinjaValue>(Py.Iterate(v)));
            case "lower":
                args.Bind(what);
                return Py.Str(PyText.Lower(Py.ToStr(v)));
            case "upper":
                args.Bind(what);
                return Py.Str(Py.ToStr(v).ToUpperInvariant());
            case "map":
            {
                var items = Py.Iterate(v);
                int attributeIndex = args.Keywords.FindIndex(k => k.Key == "attribute");
                if (attributeIndex >= 0)
                {
                    var p = args.Bind(what, "attribute", "default");
                    return new ListValue(items.Select(x =>
                    {
                        var value = AttributePath(x, p[0]!);
                        return value is UndefinedValue && p[1] != null ? p[1]! : value;
                    }).ToList());
                }
                if (args.Positional.Count == 0) throw new JinjaError("map() needs a filter name or attribute=");
                string filter = RequireString(args.Positional[0], "map() filter name");
                if (!SupportedFilters.Contains(filter)) throw new JinjaError($"map(): no supported filter named '{filter}'");
                var rest = new CallArgs(args.Positional.Skip(1).ToList(), args.Keywords);
                return new ListValue(items.Select(x => Filter(filter, x, rest, interpreter)).ToList());
            }
            case "max":
            case "min":
            {
                var p = args.Bind(what, "case_sensitive", "attribute");
                bool caseSensitive = OptionalBool(p[0]);
                var items = Py.Iterate(v);
                if (items.Count == 0) return new UndefinedValue($"No aggregated item, sequence was empty.");
                JinjaValue Key(JinjaValue x) => SortKey(AttributePath(x, p[1]), caseSensitive);
                var best = items[0];
                foreach (var item in items.Skip(1))
                {
                    int c = Py.Compare(Key(item), Key(best), "<");
                    if (name == "max" ? c > 0 : c < 0) best = item;
                }
                return best;
            }
            case "select":
            case "reject":
            case "selectattr":
            case "rejectattr":
                return SelectOrReject(name, v, args);
            case "replace":
                return Replace(Py.ToStr(v), args.Bind(what, "old", "new", "count"));
            case "reverse":
                args.Bind(what);
                if (v is StringValue rs) return Py.Str(string.Concat(Enumerable.Reverse(Py.Chars(rs.Value))));
                return new ListValue(Enumerable.Reverse(Py.Iterate(v)).ToList());
            case "round":
                return Round(v, args.Bind(what, "precision", "method"));
            case "safe":
                args.Bind(what);
                return v;
            case "sort":
            {
                var p = args.Bind(what, "reverse", "case_sensitive", "attribute");
                bool caseSensitive = OptionalBool(p[1]);
                return new ListValue(SortBy(Py.Iterate(v), x => SortKey(AttributePath(x, p[2]), caseSensitive), OptionalBool(p[0])));
            }
            case "string":
                args.Bind(what);
                return v is StringValue ? v : Py.Str(Py.ToStr(v));
            case "sum":
            {
                var p = args.Bind(what, "attribute", "start");
                JinjaValue total = p[1] ?? new IntValue(0);
                foreach (var item in Py.Iterate(v))
                    total = JinjaInterpreter.Arithmetic("+", total, AttributePath(item, p[0]));
                return total;
            }
            case "title":
                args.Bind(what);
                return Py.Str(JinjaTitle(Py.ToStr(v)));
            case "tojson":
            {
                // transformers replaces Jinja's tojson with json.dumps(x, ensure_ascii=False, ...) — no HTML escaping.
                var p = args.Bind(what, "ensure_ascii", "indent", "separators", "sort_keys");
                string? indent = p[1] is null or NoneValue ? null : IndentText(p[1]!);
                string itemSeparator = indent == null ? ", " : ",", keySeparator = ": ";
                if (p[2] is ListValue { Items.Count: 2 } separators)
                {
                    itemSeparator = RequireString(separators.Items[0], "tojson separators");
                    keySeparator = RequireString(separators.Items[1], "tojson separators");
                }
                else if (p[2] is not (null or NoneValue)) throw new JinjaError("tojson separators must be a (item, key) pair of strings");
                var sb = new StringBuilder();
                PyJson.Write(sb, v, OptionalBool(p[0]), indent, itemSeparator, keySeparator, OptionalBool(p[3]), 0);
                return Py.Str(sb.ToString());
            }
            case "trim":
                return Py.Str(PyText.Strip(Py.ToStr(v), OptionalString(args.Bind(what, "chars")[0], "trim chars"), true, true));
            case "unique":
            {
                var p = args.Bind(what, "case_sensitive", "attribute");
                bool caseSensitive = OptionalBool(p[0]);
                var seen = new List<JinjaValue>();
                var result = new List<JinjaValue>();
                foreach (var item in Py.Iterate(v))
                {
                    var key = SortKey(AttributePath(item, p[1]), caseSensitive);
                    if (seen.Exists(s => Py.Equal(s, key))) continue;
                    seen.Add(key);
                    result.Add(item);
                }
                return new ListValue(result);
            }
            case "wordcount":
                args.Bind(what);
                return new IntValue(Regex.Matches(Py.ToStr(v), @"\w+").Count);
            default:
                throw new JinjaError(UnsupportedFilters.Contains(name) ? $"filter '{name}' is not supported" : $"no filter named '{name}'");
        }
    }

    private static string StripRadixPrefix(string text, int radix)
    {
        string sign = text.StartsWith('-') ? "-" : "";
        string body = text.TrimStart('+', '-');
        string prefix = radix switch { 16 => "0x", 8 => "0o", 2 => "0b", _ => "" };
        if (prefix != "" && body.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)) body = body[2..];
        if (sign == "-") throw new FormatException(); // negative non-decimal literals: leave to the default
        return body;
    }

    /// <summary>Jinja's round: Python's round() (half to even) for "common", else floor/ceil; floats stay floats.</summary>
    private static JinjaValue Round(JinjaValue v, JinjaValue?[] p)
    {
        int precision = (int)OptionalLong(p[0], 0);
        string method = OptionalString(p[1], "round method") ?? "common";
        if (method is not ("common" or "floor" or "ceil")) throw new JinjaError("method must be 'common', 'ceil' or 'floor'");
        if (v is IntValue or BoolValue && method == "common" && precision >= 0) return new IntValue(Py.ToLong(v));
        double x = Py.ToDouble(v is UndefinedValue u ? throw u.Fail() : v);
        if (method == "common") return new FloatValue(PyRound(x, precision));
        double scale = Math.Pow(10, precision);
        return new FloatValue((method == "floor" ? Math.Floor(x * scale) : Math.Ceiling(x * scale)) / scale);
    }

    /// <summary>
    /// Python's round(x, n): half to even on the exact binary value, so 2.675 (really 2.67499…)
    /// rounds to 2.67 (Math.Round gives 2.68). .NET prints the exact decimal expansion with "F".
    /// </summary>
    private static double PyRound(double x, int digits)
    {
        if (!double.IsFinite(x) || digits > 330 || Math.Abs(x) >= 4503599627370496.0) return x; // already integral, or exact
        if (digits < 0) return Math.Round(x / Math.Pow(10, -digits), MidpointRounding.ToEven) * Math.Pow(10, -digits);
        string s = Math.Abs(x).ToString("F" + (digits + 1100), CultureInfo.InvariantCulture); // every double's expansion fits
        int cut = s.IndexOf('.') + 1 + digits;
        var kept = (digits == 0 ? s[..(cut - 1)] : s[..cut]).ToCharArray();
        string rest = s[cut..].TrimEnd('0');
        bool up = rest.Length > 0 && (rest[0] > '5' || (rest[0] == '5' && (rest.Length > 1 || (kept[^1] - '0') % 2 == 1)));
        string rounded = new string(kept);
        if (up)
        {
            int i = kept.Length - 1; // add one unit in the last kept place, carrying leftwards
            for (; i >= 0; i--)
            {
                if (kept[i] == '.') continue;
                if (kept[i] != '9') { kept[i]++; break; }
                kept[i] = '0';
            }
            rounded = (i < 0 ? "1" : "") + new string(kept);
        }
        double result = double.Parse(rounded, CultureInfo.InvariantCulture);
        return x < 0 ? -result : result;
    }

    /// <summary>Jinja's indent filter (lines split like Python's splitlines, blank lines left alone unless blank=true).</summary>
    private static string Indent(string s, string indent, bool first, bool blank)
    {
        var lines = SplitLines(s + "\n", keepEnds: false);
        string rv;
        if (blank) rv = string.Join("\n" + indent, lines);
        else
        {
            rv = lines[0];
            if (lines.Count > 1) rv += "\n" + string.Join("\n", lines.Skip(1).Select(l => l.Length > 0 ? indent + l : l));
        }
        return first ? indent + rv : rv;
    }

    /// <summary>Jinja's title filter: words start after "-", whitespace or an opening bracket.</summary>
    private static string JinjaTitle(string s)
    {
        var sb = new StringBuilder();
        foreach (var part in Regex.Split(s, @"([-\s\(\{\[\<]+)"))
            if (part.Length > 0) sb.Append(char.ToUpperInvariant(part[0])).Append(part[1..].ToLowerInvariant());
        return sb.ToString();
    }

    /// <summary>The sort key of sort/unique/min/max/dictsort: strings lower-cased unless case-sensitive.</summary>
    private static JinjaValue SortKey(JinjaValue v, bool caseSensitive) =>
        !caseSensitive && v is StringValue s ? Py.Str(s.Value.ToLowerInvariant()) : v;

    private static List<JinjaValue> SortBy(List<JinjaValue> items, Func<JinjaValue, JinjaValue> key, bool reverse)
    {
        // Python's sort is stable, also when reversed; OrderBy is stable too, List.Sort is not.
        var comparer = Comparer<JinjaValue>.Create((a, b) => Py.Compare(a, b, "<"));
        try
        {
            return (reverse ? items.OrderByDescending(key, comparer) : items.OrderBy(key, comparer)).ToList();
        }
        catch (InvalidOperationException e) when (e.InnerException is JinjaError inner)
        {
            throw inner; // the sort wraps a failed comparison ("'<' not supported between 'str' and 'int'")
        }
    }

    /// <summary>Jinja's attribute lookup for filters: "a.b.0" walks items (integers index lists); no attribute is the item itself.</summary>
    private static JinjaValue AttributePath(JinjaValue item, JinjaValue? attribute)
    {
        if (attribute == null) return item;
        if (attribute is IntValue) return GetItem(item, attribute);
        var value = item;
        foreach (var part in RequireString(attribute, "attribute").Split('.'))
        {
            if (value is UndefinedValue) return value;
            value = long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long index)
                ? GetItem(value, new IntValue(index))
                : GetItem(value, Py.Str(part));
        }
        return value;
    }

    private static JinjaValue SelectOrReject(string name, JinjaValue v, CallArgs args)
    {
        bool byAttribute = name.EndsWith("attr", StringComparison.Ordinal);
        bool select = name.StartsWith("select", StringComparison.Ordinal);
        if (args.Keywords.Count > 0) throw new JinjaError($"{name}() takes no keyword arguments");
        int at = 0;
        JinjaValue? attribute = null;
        if (byAttribute)
        {
            if (args.Positional.Count == 0) throw new JinjaError($"{name}() needs an attribute name");
            attribute = args.Positional[at++];
        }
        string? test = at < args.Positional.Count ? RequireString(args.Positional[at++], $"{name}() test name") : null;
        if (test != null && !SupportedTests.Contains(test)) throw new JinjaError($"no test named '{test}'");
        var testArgs = new CallArgs(args.Positional.Skip(at).ToList(), []);
        var result = new List<JinjaValue>();
        foreach (var item in Py.Iterate(v))
        {
            var value = AttributePath(item, attribute);
            bool passed = test == null ? Py.IsTrue(value) : Test(test, value, testArgs);
            if (passed == select) result.Add(item);
        }
        return new ListValue(result);
    }

    // ---------------------------------------------------------------- tests

    public static bool Test(string name, JinjaValue v, CallArgs args)
    {
        string what = $"test '{name}'";
        JinjaValue Other() => args.Bind(what, "other")[0] ?? throw new JinjaError($"{what} needs an argument");
        switch (name)
        {
            case "divisibleby":
                return Py.ToDouble(JinjaInterpreter.Arithmetic("%", v, args.Bind(what, "num")[0] ?? throw new JinjaError("divisibleby needs a number"))) == 0;
            case "eq" or "equalto" or "==": return Py.Equal(v, Other());
            case "ne" or "!=": return !Py.Equal(v, Other());
            case "lt" or "lessthan" or "<": return Py.Compare(v, Other(), "<") < 0;
            case "le" or "<=": return Py.Compare(v, Other(), "<=") <= 0;
            case "gt" or "greaterthan" or ">": return Py.Compare(v, Other(), ">") > 0;
            case "ge" or ">=": return Py.Compare(v, Other(), ">=") >= 0;
            case "in": return Py.Contains(args.Bind(what, "seq")[0] ?? throw new JinjaError("'in' test needs a sequence"), v);
            case "sameas":
            {
                // Python's "is": None, booleans and (cached) small ints are singletons; other values by reference.
                var other = Other();
                return ReferenceEquals(v, other) || (v is NoneValue && other is NoneValue)
                    || (v is BoolValue a && other is BoolValue b && a.Value == b.Value)
                    || (v is IntValue i && other is IntValue j && i.Value == j.Value);
            }
        }
        args.Bind(what); // every other test takes no argument
        return name switch
        {
            "defined" => v is not UndefinedValue,
            "undefined" => v is UndefinedValue,
            "none" => v is NoneValue,
            "boolean" => v is BoolValue,
            "true" => v is BoolValue { Value: true },
            "false" => v is BoolValue { Value: false },
            "integer" => v is IntValue,
            "float" => v is FloatValue,
            "number" => Py.IsNumber(v), // Python: isinstance(True, Number)
            "string" => v is StringValue,
            "mapping" => v is DictValue,
            // Python's Undefined defines __iter__, __len__ and __getitem__ (and __call__), so these hold for it.
            "iterable" or "sequence" => v is ListValue or DictValue or StringValue or UndefinedValue,
            "callable" => v is CallableValue or UndefinedValue,
            "escaped" => false,
            "odd" => Py.ToLong(JinjaInterpreter.Arithmetic("%", v, new IntValue(2))) == 1,
            "even" => Py.ToLong(JinjaInterpreter.Arithmetic("%", v, new IntValue(2))) == 0,
            "lower" => IsLower(Py.ToStr(v)),
            "upper" => IsUpper(Py.ToStr(v)),
            "filter" => v is StringValue f && SupportedFilters.Contains(f.Value),
            "test" => v is StringValue t && SupportedTests.Contains(t.Value),
            _ => throw new JinjaError($"no test named '{name}'"),
        };
    }
}

/// <summary>Python's json.dumps, as transformers' tojson calls it.</summary>
internal static class PyJson
{
    public static void Write(StringBuilder sb, JinjaValue v, bool ensureAscii, string? indent, string itemSeparator, string keySeparator, bool sortKeys, int depth)
    {
        switch (v)
        {
            case NoneValue: sb.Append("null"); return;
            case BoolValue b: sb.Append(b.Value ? "true" : "false"); return;
            case IntValue i: sb.Append(i.Value.ToString(CultureInfo.InvariantCulture)); return;
            case FloatValue f:
                sb.Append(double.IsNaN(f.Value) ? "NaN" : double.IsInfinity(f.Value) ? (f.Value > 0 ? "Infinity" : "-Infinity") : Py.FloatRepr(f.Value));
                return;
            case StringValue s: WriteString(sb, s.Value, ensureAscii); return;
            case ListValue l:
                if (l.Items.Count == 0) { sb.Append("[]"); return; }
                sb.Append('[');
                for (int i = 0; i < l.Items.Count; i++)
                {
                    if (i > 0) sb.Append(itemSeparator);
                    NewLine(sb, indent, depth + 1);
                    Write(sb, l.Items[i], ensureAscii, indent, itemSeparator, keySeparator, sortKeys, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append(']');
                return;
            case DictValue d:
                if (d.Items.Count == 0) { sb.Append("{}"); return; }
                IEnumerable<KeyValuePair<string, JinjaValue>> entries = d.Items;
                if (sortKeys) entries = entries.OrderBy(kv => kv.Key, StringComparer.Ordinal);
                sb.Append('{');
                bool first = true;
                foreach (var (key, value) in entries)
                {
                    if (!first) sb.Append(itemSeparator);
                    first = false;
                    NewLine(sb, indent, depth + 1);
                    WriteString(sb, key, ensureAscii);
                    sb.Append(keySeparator);
                    Write(sb, value, ensureAscii, indent, itemSeparator, keySeparator, sortKeys, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append('}');
                return;
            case UndefinedValue u:
                throw new JinjaError($"Object of type Undefined is not JSON serializable ({u.Hint})");
            default:
                throw new JinjaError($"Object of type {v.TypeName} is not JSON serializable");
        }
    }

    private static void NewLine(StringBuilder sb, string? indent, int depth)
    {
        if (indent == null) return;
        sb.Append('\n');
        for (int i = 0; i < depth; i++) sb.Append(indent);
    }

    private static void WriteString(StringBuilder sb, string s, bool ensureAscii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ensureAscii && c > 0x7e)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
