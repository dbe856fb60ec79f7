using System.Text;

namespace NativeLora.Text;

/// <summary>
/// Python's <c>str</c> behaviours, in one place for the two things that must match Python: chat templates
/// (Jinja runs on Python strings) and the evaluation metrics (their reference implementations tokenize with
/// Python). Python's whitespace set is wider than .NET's <see cref="char.IsWhiteSpace(char)"/> (it includes
/// U+001C–U+001F), and <c>len()</c> counts code points, not UTF-16 units.
/// </summary>
internal static class PyText
{
    /// <summary>Python's <c>str.isspace()</c> for one BMP character (every Python whitespace character is in the BMP):
    /// .NET's whitespace plus the ASCII separators U+001C–U+001F, the same set character for character.</summary>
    public static bool IsSpace(char c) => char.IsWhiteSpace(c) || (c >= '\x1c' && c <= '\x1f');

    /// <summary>Python's str.split / rsplit: no separator splits on runs of whitespace and drops empties.</summary>
    public static List<string> Split(string s, string? sep = null, long maxsplit = -1, bool fromRight = false)
    {
        if (sep == "") throw new ArgumentException("empty separator", nameof(sep));
        if (maxsplit < 0) maxsplit = long.MaxValue;
        var parts = new List<string>();
        if (sep == null)
        {
            // Runs of whitespace separate; leading and trailing whitespace never make empty parts.
            if (!fromRight)
            {
                int i = 0;
                while (true)
                {
                    while (i < s.Length && IsSpace(s[i])) i++;
                    if (i == s.Length) break;
                    if (parts.Count == maxsplit) { parts.Add(s[i..]); break; } // the rest keeps its trailing whitespace
                    int j = i;
                    while (j < s.Length && !IsSpace(s[j])) j++;
                    parts.Add(s[i..j]);
                    i = j;
                }
            }
            else
            {
                int i = s.Length;
                while (true)
                {
                    while (i > 0 && IsSpace(s[i - 1])) i--;
                    if (i == 0) break;
                    if (parts.Count == maxsplit) { parts.Add(s[..i]); break; }
                    int j = i;
                    while (j > 0 && !IsSpace(s[j - 1])) j--;
                    parts.Add(s[j..i]);
                    i = j;
                }
                parts.Reverse();
            }
            return parts;
        }
        if (!fromRight)
        {
            int start = 0;
            for (int at = s.IndexOf(sep, StringComparison.Ordinal); at >= 0 && parts.Count < maxsplit; at = s.IndexOf(sep, start, StringComparison.Ordinal))
            {
                parts.Add(s[start..at]);
                start = at + sep.Length;
            }
            parts.Add(s[start..]);
            return parts;
        }
        int end = s.Length;
        while (parts.Count < maxsplit && end >= sep.Length)
        {
            int at = s.LastIndexOf(sep, end - 1, StringComparison.Ordinal); // a match ending at or before `end`
            if (at < 0) break;
            parts.Add(s[(at + sep.Length)..end]);
            end = at;
        }
        parts.Add(s[..end]);
        parts.Reverse();
        return parts;
    }

    /// <summary>Python's <c>strip</c>/<c>lstrip</c>/<c>rstrip</c>: whitespace, or any of <paramref name="chars"/>, off the chosen ends.</summary>
    public static string Strip(string s, string? chars = null, bool left = true, bool right = true)
    {
        int start = 0, end = s.Length;
        Func<char, bool> strip = chars == null ? IsSpace : chars.Contains;
        if (left) while (start < end && strip(s[start])) start++;
        if (right) while (end > start && strip(s[end - 1])) end--;
        return s[start..end];
    }

    /// <summary>Python's <c>len(s)</c>: code points (a surrogate pair is one; a lone surrogate also counts one).</summary>
    public static int Length(string s)
    {
        int n = 0;
        foreach (var _ in s.EnumerateRunes()) n++;
        return n;
    }

    public static int Utf8Length(string s) => Encoding.UTF8.GetByteCount(s);

    /// <summary>
    /// Python's <c>str.lower()</c>: .NET's invariant lower-casing plus Python's one unconditional
    /// special case, U+0130 İ → "i̇" (i and a combining dot, so it splits ROUGE tokens as in Python).
    /// Not reproduced: Greek final sigma (Python lower-cases a word-final Σ to ς, .NET to σ).
    /// </summary>
    public static string Lower(string s) => s.Replace("\u0130", "i\u0307", StringComparison.Ordinal).ToLowerInvariant();

    /// <summary>
    /// Python's <c>str.capitalize()</c> (3.8+): first character title-cased, the rest lower-cased.
    /// The first character uses .NET's invariant upper case (with the four Latin digraphs mapped to
    /// their title forms); Python's full mappings differ for a few characters (ß → "Ss", ligatures),
    /// none of which begin English benchmark text.
    /// </summary>
    public static string Capitalize(string s)
    {
        if (s.Length == 0) return s;
        if (Rune.DecodeFromUtf16(s, out var first, out int firstLen) != System.Buffers.OperationStatus.Done)
            return s[..1] + Lower(s[1..]); // a lone surrogate has no case
        // title case differs from upper case only for the Latin digraphs DŽ/Dž/dž, LJ/Lj/lj, NJ/Nj/nj, DZ/Dz/dz
        string head = first.Value switch
        {
            >= 0x01C4 and <= 0x01C6 => "\u01C5",
            >= 0x01C7 and <= 0x01C9 => "\u01C8",
            >= 0x01CA and <= 0x01CC => "\u01CB",
            >= 0x01F1 and <= 0x01F3 => "\u01F2",
            _ => Rune.ToUpperInvariant(first).ToString(),
        };
        return head + Lower(s[firstLen..]);
    }
}
