#!/usr/bin/env python3
"""File-level import loops of Rust source trees: `scripts/import_loops.py groupcache/src bench/src`.

Builds the graph of `crate::`, `super::`, `self::` paths and `use child::` lines (test modules
and comments left out) and prints its cycles (strongly connected components); `[]` means none.
Exits 1 if any tree has one: `scripts/test.sh` runs it on the library, the bench, the example and
the tests' harness, so CI fails on a new import loop.
"""
import os,re,sys
def cycles(root):
    files={}
    for r,_,fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p=os.path.relpath(os.path.join(r,f),root); files[p]=open(os.path.join(r,f)).read()
    def modpath(p):
        parts=p[:-3].split('/')
        if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
        return parts
    bymod={tuple(modpath(p)):p for p in files}
    def resolve(parts):
        for i in range(len(parts),0,-1):
            t=tuple(parts[:i])
            if t in bymod: return bymod[t]
    edges={p:set() for p in files}
    for p,s in files.items():
        s=re.split(r'#\[cfg\(test\)\]\s*mod tests',s)[0]
        s='\n'.join(l for l in s.split('\n') if not l.strip().startswith('//'))
        me=modpath(p)
        children=set(re.findall(r'^\s*(?:pub(?:\([a-z]+\))?\s+)?mod (\w+);',s,re.M))
        # Paths, with a brace group (`use super::{journey::Inner, store}`) expanded one level deep:
        # each of its items is a path of its own.
        paths=[]
        for m in re.finditer(r'\b(crate|super|self)((?:::\w+)*)(?:::\{([^{}]*)\})?',s):
            head=m.group(2).split('::')[1:]
            items=[i.strip() for i in (m.group(3) or '').split(',') if i.strip()]
            # A path at all: `self.x` and `superseded` are not.
            if not head and not items: continue
            if not items: paths.append((m.group(1),head))
            for item in items:
                tail=re.findall(r'\w+',item.split(' as ')[0])
                paths.append((m.group(1),head+[w for w in tail if w!='self']))
        for kind,rest in paths:
            if kind=='crate': parts=rest
            elif kind=='self': parts=me+rest
            else: parts=me[:-1]+rest
            t=resolve(parts)
            if t and t!=p and modpath(t)!=[]: edges[p].add(t)
        for m in re.finditer(r'^\s*(?:pub(?:\([a-z]+\))?\s+)?use (\w+)::',s,re.M):
            if m.group(1) in children:
                t=resolve(me+[m.group(1)])
                if t: edges[p].add(t)
    idx={};low={};st=[];on=set();sccs=[];i=[0]
    sys.setrecursionlimit(10000)
    def dfs(v):
        idx[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
        for w in edges[v]:
            if w not in idx: dfs(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            c=[]
            while True:
                w=st.pop();on.discard(w);c.append(w)
                if w==v:break
            if len(c)>1: sccs.append(c)
    for v in files:
        if v not in idx: dfs(v)
    return sccs

found=False
for root in sys.argv[1:]:
    sccs=cycles(root)
    print(root,"cycles:",sccs)
    found=found or bool(sccs)
sys.exit(1 if found else 0)
